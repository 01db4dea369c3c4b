//! No library code: `tests/topology.rs` starts the production topology
//! (edge proxy with `deploy/nginx/edge.conf.template`, one webhook-gateway,
//! two processors, two api-gateways) as local processes, without Docker.
