"""Logic shared by the stage scripts: params, paths, atomic I/O, model resolution."""
