"""Generated protobuf modules of the resource contract (protos/); regenerate with scripts/gen_protos.sh."""
