"""Analysis of scaling sweeps: run directories and CSVs in, fits, tables and figures out.

Modules: runs (run directories -> DataFrame), laws (functional forms), fit (approach 3 and generic
robust multi-start fits with bootstrap CIs), isoflop (approaches 1 and 2), emergence, ablation,
backtest, plots, report, synthetic (synthetic run directories for tests and demos). This package
never imports the training code.
"""
