import os
import sys


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    words = sum(len(open(os.path.join(here, f)).read().split()) for f in sorted(os.listdir(here)) if f.endswith(".py"))
    print(f"app running as uid {os.getuid()} in {os.getcwd()}, python {sys.version.split()[0]}, {words} words of source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
