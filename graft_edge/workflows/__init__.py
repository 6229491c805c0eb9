"""Multi-stage recipes built from the library: the resumable prune run, the frontier, the demo, tuning, the sweep.

    from graft_edge.workflows.frontier import FrontierSettings, run_frontier
    result = run_frontier("best.pt", "data/", "frontier/", FrontierSettings(targets=("70%", "45%"), batch=64))
"""
