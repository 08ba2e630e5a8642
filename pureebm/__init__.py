"""PureEBM engine: energy nets, Langevin purifier, registry, images and archives, training."""
