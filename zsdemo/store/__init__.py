"""Gallery caches on disk: layout, update plans, resumable encoding runs, generations, indexes, uploads, export."""
