//! One description of a test stack, typed, for every service's tests:
//! where its data and NATS are, how many api-gateways, and what each
//! service is given besides. test-support cannot start the services
//! itself (they depend on it), so each service's tests have one function
//! that starts a stack in-process from a [`StackConfig`], named
//! `spawn_stack` everywhere.

use crate::Mongo;

/// Where the stack's NATS is and how its streams are kept.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: String,
    /// Arguments for every service (e.g. `--stream-replicas=3`).
    pub args: Vec<String>,
    /// Arguments for the webhook-gateway only.
    pub gateway_args: Vec<String>,
}

impl Default for NatsSettings {
    /// The test run's NATS server (`TEST_NATS_URL`).
    fn default() -> Self {
        Self {
            url: crate::nats_url(),
            args: Vec::new(),
            gateway_args: Vec::new(),
        }
    }
}

/// A stack to start: by default on the replica set (as compose and k8s
/// run MongoDB), the test run's NATS, one api-gateway, a fresh namespace
/// (its subjects, streams and database).
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub namespace: String,
    pub mongo: Mongo,
    pub nats: NatsSettings,
    /// Processors started with the stack (0: the test starts its own).
    pub processors: usize,
    /// api-gateways started with the stack (for the tests of services
    /// that start them).
    pub api_replicas: usize,
    pub api_args: Vec<String>,
    pub processor_args: Vec<String>,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            namespace: crate::unique_name("stack"),
            mongo: Mongo::ReplicaSet,
            nats: NatsSettings::default(),
            processors: 1,
            api_replicas: 1,
            api_args: Vec::new(),
            processor_args: Vec::new(),
        }
    }
}

impl StackConfig {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn mongo(self, mongo: Mongo) -> Self {
        Self { mongo, ..self }
    }

    pub fn nats(self, nats: NatsSettings) -> Self {
        Self { nats, ..self }
    }

    pub fn processors(self, processors: usize) -> Self {
        Self { processors, ..self }
    }

    pub fn api_replicas(self, api_replicas: usize) -> Self {
        Self {
            api_replicas,
            ..self
        }
    }

    pub fn api_args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.api_args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn processor_args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.processor_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The stack's MongoDB connection string (its database named after
    /// the namespace).
    pub fn mongodb_uri(&self) -> String {
        self.mongo.uri(&self.namespace)
    }

    /// The command line of `binary` in this stack: loopback, a free port,
    /// its NATS and namespace, and MongoDB for the services that store.
    pub fn args(&self, binary: &str, stores: bool) -> Vec<String> {
        let mut args = vec![
            binary.to_owned(),
            "--host=127.0.0.1".into(),
            "--port=0".into(),
            format!("--nats-url={}", self.nats.url),
            format!("--nats-namespace={}", self.namespace),
        ];
        args.extend(self.nats.args.iter().cloned());
        if stores {
            args.push(format!("--mongodb-uri={}", self.mongodb_uri()));
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_s_command_line_names_its_stack() {
        let config = StackConfig {
            namespace: "ns".to_owned(),
            mongo: Mongo::ReplicaSet,
            nats: NatsSettings {
                url: "nats://n:4222".to_owned(),
                args: vec!["--stream-replicas=3".to_owned()],
                gateway_args: Vec::new(),
            },
            processors: 1,
            api_replicas: 1,
            api_args: Vec::new(),
            processor_args: Vec::new(),
        }
        .api_args(["--socket-buffer=1"])
        .api_replicas(2);
        assert_eq!(
            config.args("webhook-gateway", false),
            [
                "webhook-gateway",
                "--host=127.0.0.1",
                "--port=0",
                "--nats-url=nats://n:4222",
                "--nats-namespace=ns",
                "--stream-replicas=3"
            ]
        );
        assert_eq!(config.api_args, ["--socket-buffer=1"]);
        assert_eq!(config.api_replicas, 2);
    }
}
