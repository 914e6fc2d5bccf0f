"""Blood flow, contrast transport, the clot and the thrombectomy (issue: flow)."""
