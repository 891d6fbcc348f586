"""One module per ``streetlight`` sub-command; each exposes HELP, add_arguments and run."""
