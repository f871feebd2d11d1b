"""runtime: the training monitor (`watch_training`) and tensor precision analysis
(`analyze_tensor`, `compare_precision`). Needs torch."""
