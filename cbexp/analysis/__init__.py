"""Analysis of cbexp runs: RD curves, BD-rate, the comparison table and paper-style figures.

    runs (MLflow) --runs.search_runs/runs_to_points--> points table --> bd / tables / figures
    published numbers --reference.published_points--> points table (same path)

``cbexp analyze`` (conf/analysis.yaml) runs the whole thing; ``report`` writes files.
"""
