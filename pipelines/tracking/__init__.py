"""Per-camera state across frames: face tracks and change-gated detection."""
