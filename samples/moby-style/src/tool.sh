#!/bin/sh
# The "program" the sample builds: prints its version and its arguments.
echo "tool @VERSION@: $*"
