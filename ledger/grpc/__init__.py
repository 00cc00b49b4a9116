"""Generated protobuf and gRPC modules of the platform's services (protos/ledger/grpc); regenerate with scripts/gen_protos.sh."""
