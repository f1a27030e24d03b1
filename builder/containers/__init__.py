"""Containers: `lamina run [-d]`, `ps`, `logs`, `stop`, `kill`, `rm`, `exec`, `commit`.

state (the record in ROOT/containers/<id>/, liveness across kills and reboots),
logs (the log file: docker's json-file records), create (image -> record), monitor
(the per-container supervisor process, as conmon), attach (a foreground run: follow
the log, forward signals, drive the TTY), control (stop, kill, rm, exec), commit
(the upper dir becomes a layer), imagehold (every container holds its image in the
store until `rm`; rmi's conflicts), userns (rootless: container commands join the user
namespace of a live monitor). The namespaces themselves: builder.sandbox.container.
"""
