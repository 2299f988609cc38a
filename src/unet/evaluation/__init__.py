"""The evaluation task: scores on a split, the run report and its pictures."""
