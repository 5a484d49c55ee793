"""her2fed core: exact federated survival statistics.

Pure computation only: no files, no network, no Flower. Every statistic is
split into a site-side summary on a public grid, a merge that adds summaries,
and an estimator that reads only the merged summary.
"""

__version__ = "0.1.0"
