"""greeter: an example service whose entry comes from [project.scripts]."""
