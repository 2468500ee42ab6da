"""Model-weight sync between regional buckets: manifests, planning, copying and promotion."""
