"""sealtree's command-line application."""
