"""lamina: a daemonless, reproducible builder of OCI images from Dockerfiles.

The distribution installs one top-level name, ``lamina``, with three packages
under it (their folders sit at the top of the repository and are mapped here by
the build configuration):

    lamina.grammar   Dockerfile text -> AST
    lamina.store     bytes on disk and on the wire (blobs, layers, OCI formats)
    lamina.builder   planning, sandbox, executor, the `lamina` CLI

Imports go one way: builder -> grammar, builder -> store.
"""

__version__ = "0.1.0"
