"""Benchmarks of thalamus, beside the product rather than inside it.

- :mod:`benchmarks.data`: loading a routing dataset (train/test splits, expert attributes, the quick slice);
- :mod:`benchmarks.policies`: the non-router baselines and the λ_size routing rule;
- :mod:`benchmarks.report`: one table row per policy, the summary, the text report and the Pareto plot;
- :mod:`benchmarks.quality`: routing quality through the product's own path (``thalamus bench quality``);
- :mod:`benchmarks.demo_dataset`: the demo expert library as a dataset (``thalamus bench demo-dataset``);
- :mod:`benchmarks.quality_ablation`, :mod:`benchmarks.train_speed`, :mod:`benchmarks.spool_latency`: scripts,
  ``python -m benchmarks.<name>``;
- :mod:`benchmarks.tcpproxy`, :mod:`benchmarks.loadgen`: fault injection (a killable TCP proxy) and open-loop load.
"""
