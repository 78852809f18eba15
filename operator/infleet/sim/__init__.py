"""infleet's fleet simulator: replay a request trace on AcceleratorPools under a scaling policy (`infleet simulate`).

It uses the decision core (:mod:`infleet.policy`) exactly as the operator does, and never talks to a cluster.
"""
