"""A tiny app: counts words of its own source, proves it runs where it was built.
Its libraries are Debian's packages of them in the base image (python3-idna,
python3-packaging: make-base.sh); --self-test checks that they work."""
import os
import sys

import idna
from packaging.version import Version


def self_test() -> None:
    if idna.encode("b\u00fccher.example") != b"xn--bcher-kva.example":
        raise SystemExit("idna does not encode an internationalised host name")
    if Version(sys.version.split()[0]) < Version("3.11"):
        raise SystemExit("python 3.11 or newer expected")


def main() -> int:
    if "--self-test" in sys.argv[1:]:
        self_test()
    here = os.path.dirname(os.path.abspath(__file__))
    words = sum(len(open(os.path.join(here, f)).read().split()) for f in sorted(os.listdir(here)) if f.endswith(".py"))
    print(f"app running as uid {os.getuid()} in {os.getcwd()}, python {sys.version.split()[0]}, {words} words of source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
