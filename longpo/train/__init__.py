"""The LongPO loss, lean log-probs, shared-prefix packing, sequence parallel and the trainer."""
