"""PureEBM engine: energy nets, Langevin purifier, registry, formats, training."""
