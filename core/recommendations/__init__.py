""""Pairs well with": the recommenders, the neighbour lists the storefront merges, the ranking head, the
merchant's rules and the A/B holdout, and serving a block."""
