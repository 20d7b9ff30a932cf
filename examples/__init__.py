"""Networks and scripts that use the harness from outside models/ (the plug-in path)."""
