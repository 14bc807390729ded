"""robench's command-line front end (installed as ``robench.cli``)."""
