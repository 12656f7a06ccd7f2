"""`make docs-gen`: regenerate every reference table (tests/docs/test_generated.py fails when one
is stale)."""

from __future__ import annotations

from tools.docsgen.targets import TARGETS, write_all


def main() -> None:
    written = write_all()
    print(f"{len(TARGETS)} generated files, {len(written)} updated", *written, sep="\n  ")


if __name__ == "__main__":
    main()
