"""`python -m robench` runs the CLI (needed by `torchrun -m robench`)."""

# cli/ installs as robench.cli (package-dir in pyproject.toml), a mapping mypy cannot follow: it checks cli/ as `cli`
from robench.cli.main import main  # type: ignore[import-not-found]

if __name__ == "__main__":
    main()
