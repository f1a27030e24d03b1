"""`lamina bake`: build every image a project describes, from a Compose file or a
buildx bake file (HCL or JSON), in one invocation on one store.

- compose: a Compose file (YAML, compose's variable interpolation and `.env`) ->
  raw targets, one per service with a `build:` section;
- bakefile: a docker-bake.hcl / .json (variables, functions, `${}` expressions,
  targets, groups) -> raw targets and groups (hclexpr evaluates the expressions);
- targets: the definition (groups + targets), buildx's merge/inherits/`--set`
  rules, the frozen `Target` a build is made from, and `--print`'s JSON;
- runner: builds the selected targets, independent ones in parallel, each as a
  `lamina build` child process, with one progress view labelled by target.
"""
