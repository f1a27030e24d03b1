"""lamina.builder.plan.plan: Dockerfile AST -> stages and resolved steps: ARG/ENV scoping, stage planning, the image config per instruction, cache keys."""
