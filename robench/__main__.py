"""`python -m robench` runs the CLI (needed by `torchrun -m robench`)."""

from robench.cli.main import main

if __name__ == "__main__":
    main()
