"""builder: a Dockerfile + a build context → an image in the store.

Planning, cache keys, the build context, the namespace sandbox, the executor,
progress display and the `lamina` CLI. Imports `grammar` and `store`.
"""

from lamina.builder.errors import BuildError

__all__ = ["BuildError"]
