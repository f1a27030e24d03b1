"""The file-writing steps of a build: COPY and ADD, executed inside an image root (the
merged overlay mount of the step, or any directory standing for one).

- `builder.steps.copy`: `copy_into_root` (CopyActions from `builder.copysrc.plan_copy`
  -> files in the root), `copy_selection` (plan + copy against the merged view);
  `builder.steps.copyentry` writes one file, symlink, device or heredoc body.
- `builder.steps.add`: ADD on top of that: local archives auto-extracted (by content),
  http(s) URLs (`fetch_url`, `--checksum`), git repositories (`fetch_git`).
- `builder.steps.chmod`: octal and symbolic `--chmod` values.

Every destination path is resolved with `builder.rootpath` (symlinks interpreted inside
the root, never leaving it).
"""
