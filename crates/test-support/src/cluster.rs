//! A three-node JetStream cluster on loopback ports, for tests that kill
//! stream leaders: each node is a nats-server process with its own store
//! (kept across a restart, like a pod with a volume) and routes to the
//! others.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use async_nats::jetstream;

use crate::{free_port, unique_name, wait_until};

pub struct NatsCluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

pub struct Node {
    /// `n1`, `n2`, ...: what stream info names a leader by.
    pub name: String,
    pub port: u16,
    cluster_port: u16,
    child: Option<Child>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl NatsCluster {
    /// Starts `size` nodes and waits until JetStream has a meta leader.
    pub async fn start(size: usize) -> Self {
        let dir = std::env::temp_dir().join(unique_name("cluster"));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let nodes = (1..=size)
            .map(|n| Node {
                name: format!("n{n}"),
                port: free_port(),
                cluster_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = Self { nodes, dir };
        for index in 0..size {
            cluster.start_node(index);
        }
        for index in 0..size {
            cluster.wait_listening(index).await;
        }
        let url = cluster.urls();
        wait_until(
            "JetStream to elect its meta leader",
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    let Ok(client) = crate::connect_all(&url).await else {
                        return false;
                    };
                    // Answered once the meta leader is elected.
                    client
                        .request("$JS.API.INFO", "".into())
                        .await
                        .is_ok_and(|answer| {
                            !String::from_utf8_lossy(&answer.payload).contains("\"error\":{")
                        })
                }
            },
        )
        .await;
        cluster
    }

    /// Every node's URL, comma-separated (what `NATS_URL` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start_node(&mut self, index: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, n)| format!("nats-route://127.0.0.1:{}", n.cluster_port))
            .collect();
        let node = &self.nodes[index];
        let config = self.dir.join(format!("{}.conf", node.name));
        std::fs::write(
            &config,
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\nmax_payload: 8MB\n\
                 jetstream {{ store_dir: \"{store}\" }}\n\
                 cluster {{ name: test, listen: 127.0.0.1:{cluster}, routes: [{routes}] }}\n",
                name = node.name,
                port = node.port,
                store = self.dir.join(&node.name).display(),
                cluster = node.cluster_port,
                routes = routes.join(", "),
            ),
        )
        .expect("the node's configuration");
        // Its log next to its store, for a failing test to be read.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", node.name)))
            .map_or_else(|_| Stdio::null(), Stdio::from);
        let child = crate::spawn_nats_server(&config, log);
        self.nodes[index].child = Some(child);
    }

    async fn wait_listening(&self, index: usize) {
        crate::wait_listening("a node", self.nodes[index].port).await;
    }

    /// SIGKILL: the node stops without a word to the others.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts a killed node again, on its own store.
    pub async fn restart(&mut self, index: usize) {
        self.start_node(index);
        self.wait_listening(index).await;
    }

    /// The index of the node leading `stream`, as a running node sees it.
    pub async fn leader_of(&self, stream: &str) -> Option<usize> {
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let Ok(client) = async_nats::connect(node.url()).await else {
                continue;
            };
            let Ok(mut found) = jetstream::new(client).get_stream(stream).await else {
                continue;
            };
            let Ok(info) = found.info().await else {
                continue;
            };
            let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
            if let Some(leader) = leader {
                return self.nodes.iter().position(|n| n.name == leader);
            }
        }
        None
    }

    /// Waits until `stream` has a running leader other than `not`.
    pub async fn wait_for_new_leader(&self, stream: &str, not: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(now) = self.leader_of(stream).await
                && now != not
                && self.nodes[now].is_running()
            {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{stream} got no new leader within {timeout:?}")
    }

    /// Waits until every replica of `stream` is current (a restarted node
    /// has caught up), so that losing another node keeps a quorum.
    pub async fn wait_for_replicas(&self, stream: &str, timeout: Duration) {
        let url = self.urls();
        let stream = stream.to_owned();
        let followers = self.nodes.len() - 1;
        wait_until("every replica to be current", timeout, || {
            let (url, stream) = (url.clone(), stream.clone());
            async move {
                let Ok(client) = crate::connect_all(&url).await else {
                    return false;
                };
                let Ok(mut found) = jetstream::new(client).get_stream(&stream).await else {
                    return false;
                };
                let Ok(info) = found.info().await else {
                    return false;
                };
                info.cluster.as_ref().is_some_and(|c| {
                    c.leader.is_some()
                        && c.replicas.len() == followers
                        && c.replicas.iter().all(|r| r.current && !r.offline)
                })
            }
        })
        .await;
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
        if std::thread::panicking() {
            eprintln!("the cluster's logs: {}", self.dir.display());
        } else {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}
