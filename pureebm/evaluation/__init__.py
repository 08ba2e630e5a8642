"""Defence evaluation: poison a labelled data set, apply defences, train classifiers,
measure natural accuracy and poison success (`pureebm eval`)."""
