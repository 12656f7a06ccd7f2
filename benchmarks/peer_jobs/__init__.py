"""No-op jobs for the peer frameworks, imported only inside each peer's own virtualenv.

Each job increments ``bench:done`` so the runner can time first start to last finish the same
way for every framework. These modules never import the project (its redis-py would conflict).
"""
