"""Developer scripts: the machine set-up and the generation of committed files."""
