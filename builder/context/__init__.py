"""lamina.builder.context.context: the build context: .dockerignore, content hashes with a stat cache, COPY/ADD source selection."""
