"""python -m pare compress|bench|inspect ... — the same code as the `pare` binary."""

import sys

import pare


def main():
    sys.stdout.flush()
    return pare._pare.cli_main(["pare"] + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
