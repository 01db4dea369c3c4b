//! The WhatsApp Cloud API (Meta's Graph API) client: sends messages, marks
//! inbound ones read, downloads and uploads media.
//!
//! Every failure is a [`GraphError`] that says whether trying again later
//! may help ([`GraphError::retry`]) and carries what Meta said, ready to be
//! stored on a failed message ([`GraphError::to_errors`]). The access tokens
//! never appear in errors, logs or `Debug` output.
//!
//! One client serves every business number of the deployment: the
//! `*_from` methods take the number to send through (`POST
//! /{version}/{phone_number_id}/messages`), with that number's own token
//! (`WHATSAPP_NUMBER_TOKENS`) or else `WHATSAPP_ACCESS_TOKEN`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::multipart::{Form, Part};
use reqwest::{StatusCode, Url};
use serde_json::{Map, Value, json};

/// The Graph API settings, flattened into each binary's `Config`.
#[derive(Clone, clap::Args)]
pub struct GraphConfig {
    /// Access token of the WhatsApp Business Cloud API, for every business number without its own; unset (and no WHATSAPP_NUMBER_TOKENS): messages are stored locally only, nothing is sent to WhatsApp.
    #[arg(long, env = "WHATSAPP_ACCESS_TOKEN", hide_env_values = true)]
    pub whatsapp_access_token: Option<String>,
    /// Business numbers with their own access token: `<phone_number_id>=<token>,<phone_number_id>=<token>`.
    #[arg(long, env = "WHATSAPP_NUMBER_TOKENS", hide_env_values = true)]
    pub whatsapp_number_tokens: Option<String>,
    /// The default business number's id (Meta app › WhatsApp › API setup): what a deployment sends from before a webhook named any number.
    #[arg(long, env = "WHATSAPP_PHONE_NUMBER_ID")]
    pub whatsapp_phone_number_id: Option<String>,
    /// Base URL of the Graph API.
    #[arg(
        long,
        env = "GRAPH_API_URL",
        default_value = "https://graph.facebook.com"
    )]
    pub graph_api_url: String,
    /// Graph API version, pinned: it also decides the webhooks' shape.
    #[arg(long, env = "GRAPH_API_VERSION", default_value = "v23.0")]
    pub graph_api_version: String,
    /// Longest wait for one Graph API answer, in seconds.
    #[arg(long, env = "GRAPH_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub graph_timeout_secs: u64,
    /// Most messages sent per second per phone number (Meta's default throughput is 80/s; 20 leaves room).
    #[arg(long, env = "SEND_RATE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub send_rate: u32,
}

/// The flags' defaults: no token, so nothing is sent (configurations
/// built in code, e.g. tests).
impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            whatsapp_access_token: None,
            whatsapp_number_tokens: None,
            whatsapp_phone_number_id: None,
            graph_api_url: "https://graph.facebook.com".to_owned(),
            graph_api_version: "v23.0".to_owned(),
            graph_timeout_secs: 10,
            send_rate: 20,
        }
    }
}

/// Tokens hidden: `Debug` output ends up in logs.
impl fmt::Debug for GraphConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |set: bool| if set { "<redacted>" } else { "<unset>" };
        f.debug_struct("GraphConfig")
            .field(
                "whatsapp_access_token",
                &redacted(self.whatsapp_access_token.is_some()),
            )
            .field(
                "whatsapp_number_tokens",
                &redacted(self.whatsapp_number_tokens.is_some()),
            )
            .field("whatsapp_phone_number_id", &self.whatsapp_phone_number_id)
            .field("graph_api_url", &self.graph_api_url)
            .field("graph_api_version", &self.graph_api_version)
            .field("graph_timeout_secs", &self.graph_timeout_secs)
            .field("send_rate", &self.send_rate)
            .finish()
    }
}

impl GraphConfig {
    /// Whether any token is set (empty counts as unset): messages go to
    /// WhatsApp.
    fn sends_to_whatsapp(&self) -> bool {
        self.whatsapp_access_token
            .as_deref()
            .is_some_and(|t| !t.trim().is_empty())
            || self
                .whatsapp_number_tokens
                .as_deref()
                .is_some_and(|t| !t.trim().is_empty())
    }

    /// How long a stopping service may take (at least `base`): with
    /// WhatsApp configured, long enough for a send in flight to be answered
    /// (the Graph timeout) and its answer stored, so that a deploy sends
    /// nothing twice.
    pub fn shutdown_grace(&self, base: Duration) -> Duration {
        if self.sends_to_whatsapp() {
            base.max(Duration::from_secs(self.graph_timeout_secs.max(1)) + Duration::from_secs(5))
        } else {
            base
        }
    }

    /// `Ok(None)` without any token (empty counts as unset); an error when
    /// `WHATSAPP_ACCESS_TOKEN` is set without a phone number id, when
    /// `WHATSAPP_NUMBER_TOKENS` is not `<id>=<token>,...`, or when the URL
    /// does not parse. No error shows a token.
    pub fn client(&self) -> anyhow::Result<Option<Graph>> {
        let global_token = self
            .whatsapp_access_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let number_tokens = parse_number_tokens(self.whatsapp_number_tokens.as_deref())?;
        if global_token.is_none() && number_tokens.is_empty() {
            return Ok(None);
        }
        let default_number = self
            .whatsapp_phone_number_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty());
        if global_token.is_some() && default_number.is_none() {
            bail!("WHATSAPP_PHONE_NUMBER_ID is required when WHATSAPP_ACCESS_TOKEN is set");
        }
        let version = self.graph_api_version.trim().trim_matches('/');
        if version.is_empty() {
            bail!("GRAPH_API_VERSION is empty");
        }
        let mut base = Url::parse(self.graph_api_url.trim())
            .with_context(|| format!("GRAPH_API_URL {:?} is not a URL", self.graph_api_url))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!(
                "GRAPH_API_URL {:?} is not an http(s) URL",
                self.graph_api_url
            );
        }
        base.set_query(None);
        base.set_fragment(None);
        match base.path_segments_mut() {
            Ok(mut path) => {
                path.pop_if_empty().extend(version.split('/'));
            }
            Err(()) => bail!(
                "GRAPH_API_URL {:?} cannot be a base URL",
                self.graph_api_url
            ),
        }
        // Never echo a token, not even in these errors.
        let global_auth = global_token
            .map(|token| {
                bearer(token).ok_or_else(|| {
                    anyhow::anyhow!(
                        "WHATSAPP_ACCESS_TOKEN contains characters not allowed in an HTTP header"
                    )
                })
            })
            .transpose()?;
        let mut number_auth = BTreeMap::new();
        for (number, token) in number_tokens {
            let auth = bearer(&token).ok_or_else(|| {
                anyhow::anyhow!(
                    "WHATSAPP_NUMBER_TOKENS: the token of {number} contains characters not allowed in an HTTP header"
                )
            })?;
            number_auth.insert(number, auth);
        }
        let timeout = Duration::from_secs(self.graph_timeout_secs.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The Graph API does not redirect; a redirect must not take the
            // token (or a message) anywhere else.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("whatsapp-clone/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the Graph API HTTP client")?;
        Ok(Some(Graph {
            inner: Arc::new(Inner {
                http,
                global_auth,
                number_auth,
                base,
                default_number: default_number.map(str::to_owned),
                timeout,
                send_rate: self.send_rate.max(1),
            }),
        }))
    }
}

/// `WHATSAPP_NUMBER_TOKENS`: `<phone_number_id>=<token>` entries, comma
/// separated (blanks around them and empty entries ignored). Errors name
/// the entry by position, never its text: a mistyped entry may be a token.
fn parse_number_tokens(value: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
    let mut tokens: Vec<(String, String)> = Vec::new();
    let entries = value.unwrap_or_default().split(',').map(str::trim);
    for (index, entry) in entries.enumerate().filter(|(_, e)| !e.is_empty()) {
        let position = index + 1;
        let Some((number, token)) = entry.split_once('=') else {
            bail!("WHATSAPP_NUMBER_TOKENS: entry {position} is not <phone_number_id>=<token>");
        };
        let (number, token) = (number.trim(), token.trim());
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            bail!(
                "WHATSAPP_NUMBER_TOKENS: entry {position} does not start with a phone number id (digits) before '='"
            );
        }
        if token.is_empty() {
            bail!("WHATSAPP_NUMBER_TOKENS: the token of {number} (entry {position}) is empty");
        }
        if tokens.iter().any(|(seen, _)| seen == number) {
            bail!("WHATSAPP_NUMBER_TOKENS: {number} is given twice");
        }
        tokens.push((number.to_owned(), token.to_owned()));
    }
    Ok(tokens)
}

/// `Bearer <token>`, marked sensitive (hidden from `Debug`); `None` when the
/// token cannot be a header value.
fn bearer(token: &str) -> Option<HeaderValue> {
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.trim())).ok()?;
    auth.set_sensitive(true);
    Some(auth)
}

/// A Graph API client for the deployment's business numbers. Cheap to clone.
#[derive(Clone)]
pub struct Graph {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// `Bearer <WHATSAPP_ACCESS_TOKEN>`: serves every number without its own.
    global_auth: Option<HeaderValue>,
    /// `Bearer <token>` of the numbers with their own (`WHATSAPP_NUMBER_TOKENS`),
    /// in order of their ids (as logs list them).
    number_auth: BTreeMap<String, HeaderValue>,
    /// `{GRAPH_API_URL}/{GRAPH_API_VERSION}`.
    base: Url,
    /// `WHATSAPP_PHONE_NUMBER_ID`.
    default_number: Option<String>,
    timeout: Duration,
    send_rate: u32,
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let own_tokens: Vec<&str> = self.numbers_with_own_token().collect();
        f.debug_struct("Graph")
            .field("base", &self.inner.base.as_str())
            .field("default_number", &self.inner.default_number)
            .field("numbers_with_own_token", &own_tokens)
            .field(
                "token",
                &if self.inner.global_auth.is_some() {
                    "<redacted>"
                } else {
                    "<unset>"
                },
            )
            .finish()
    }
}

/// What Graph says of a media (`GET /{media_id}`): where its bytes are (a
/// URL valid for 5 minutes) and what they are.
#[derive(Debug, Clone)]
pub struct MediaInfo {
    pub url: Url,
    pub mime_type: Option<String>,
    /// Meta's `file_size`, when it gave one.
    pub file_size: Option<u64>,
    /// The bearer it was asked with: the download takes the same one
    /// (sensitive: `Debug` shows no token).
    auth: HeaderValue,
}

/// A media download under way: its bytes come with [`MediaBody::chunk`],
/// a network buffer at a time.
pub struct MediaBody {
    response: reqwest::Response,
    /// The download's own `Content-Type`.
    pub content_type: Option<String>,
}

impl MediaBody {
    /// The next bytes; `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, GraphError> {
        self.response.chunk().await.map_err(GraphError::transport)
    }
}

/// Why a media was not downloaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// Over the cap: by Meta's `file_size`, the `Content-Length`, or
    /// counted while reading (`size` unknown then).
    #[error("the media is {}, more than the {max_bytes} bytes allowed", size.map_or_else(|| "larger".to_owned(), |s| format!("{s} bytes")))]
    TooLarge { size: Option<u64>, max_bytes: u64 },
    /// The URL Graph named (or a redirect) leads where the token must not go.
    #[error("media URL refused: {0}")]
    Refused(String),
}

/// Meta's media hosts: the default of `MEDIA_ALLOWED_HOSTS`. Media URLs
/// from Graph are `https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=...`;
/// the CDNs behind them are Meta's own domains too.
pub const META_MEDIA_HOSTS: &str = "lookaside.fbsbx.com,*.fbsbx.com,*.fbcdn.net,*.whatsapp.net";

/// Redirects a media download may take (each to an allowed host).
const MEDIA_REDIRECTS: usize = 5;

/// Where media may be downloaded from with the access token: https URLs
/// on allowed hosts that resolve to public addresses, redirects included.
/// [`MediaFence::new`]'s `allow_private` lifts the address rule and lets
/// plain http reach a private IP address given literally (tests, local
/// stand-ins). Cheap to clone.
#[derive(Clone)]
pub struct MediaFence {
    inner: Arc<FenceInner>,
}

struct FenceInner {
    rules: Arc<HostRules>,
    /// Resolves through the fence and follows only fenced redirects.
    http: reqwest::Client,
}

impl fmt::Debug for MediaFence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaFence")
            .field("rules", &self.inner.rules)
            .finish()
    }
}

#[derive(Debug)]
struct HostRules {
    hosts: Vec<HostRule>,
    allow_private: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    /// This host name or IP address.
    Exact(String),
    /// Any subdomain: the suffix, with its leading dot.
    Subdomains(String),
}

/// A refusal by the fence, carried through reqwest's error chain (from the
/// resolver or the redirect policy) so it can be told from a network error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FenceRefusal(String);

impl MediaFence {
    /// `allowed_hosts`: host names or IP addresses, `*.example.com` for
    /// any subdomain; empty entries are skipped. An error names an entry
    /// that is not one.
    pub fn new(
        allowed_hosts: &[String],
        allow_private: bool,
        connect_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut hosts = Vec::new();
        for entry in allowed_hosts {
            if let Some(rule) = HostRule::parse(entry)
                .map_err(|why| anyhow::anyhow!("MEDIA_ALLOWED_HOSTS: {entry:?} {why}"))?
            {
                hosts.push(rule);
            }
        }
        let rules = Arc::new(HostRules {
            hosts,
            allow_private,
        });
        let policy_rules = rules.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MEDIA_REDIRECTS {
                return attempt.error(FenceRefusal("too many redirects".to_owned()));
            }
            // reqwest drops the token on a redirect to another host; the
            // host must be allowed all the same (the bytes reach the client).
            match policy_rules.check(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(FenceRefusal(format!("a redirect: {why}"))),
            }
        });
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .redirect(redirects)
            .dns_resolver(Arc::new(FencedResolver { allow_private }))
            // A proxy would resolve names itself, past the address rule.
            .no_proxy()
            .user_agent(concat!("whatsapp-clone/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the media download HTTP client")?;
        Ok(Self {
            inner: Arc::new(FenceInner { rules, http }),
        })
    }

    /// Whether the token may go to `url` (before any name is resolved).
    pub fn check(&self, url: &Url) -> Result<(), String> {
        self.inner.rules.check(url)
    }
}

impl HostRule {
    fn parse(entry: &str) -> Result<Option<Self>, &'static str> {
        let entry = entry.trim().trim_end_matches('.').to_ascii_lowercase();
        if entry.is_empty() {
            return Ok(None);
        }
        let (subdomains, name) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry.as_str()),
        };
        let bare = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            if subdomains {
                return Err("is an IP address with a wildcard");
            }
            return Ok(Some(HostRule::Exact(ip.to_string())));
        }
        let valid_name = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
        if !valid_name {
            return Err(
                "is not a host name (no scheme, port or path; `*.example.com` for subdomains)",
            );
        }
        Ok(Some(if subdomains {
            HostRule::Subdomains(format!(".{name}"))
        } else {
            HostRule::Exact(name.to_owned())
        }))
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostRule::Exact(name) => host == name,
            HostRule::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

impl HostRules {
    fn check(&self, url: &Url) -> Result<(), String> {
        // The URL parser has made IP addresses canonical and names lowercase.
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err("the URL has no host".to_owned());
        };
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let (name, literal) = match bare.parse::<IpAddr>() {
            Ok(ip) => (ip.to_string(), Some(ip)),
            Err(_) => (bare.trim_end_matches('.').to_ascii_lowercase(), None),
        };
        if !self.hosts.iter().any(|rule| rule.matches(&name)) {
            return Err(format!(
                "{name} is not a media host this service fetches from (MEDIA_ALLOWED_HOSTS)"
            ));
        }
        let private = literal.is_some_and(|ip| !is_public(ip));
        if private && !self.allow_private {
            return Err(format!(
                "{name} is a loopback, private or link-local address (MEDIA_ALLOW_PRIVATE_ADDRESSES)"
            ));
        }
        match url.scheme() {
            "https" => Ok(()),
            // The token in clear text never leaves the machine or its network.
            "http" if private => Ok(()),
            scheme => Err(format!("{scheme}:// URLs are refused (https only)")),
        }
    }
}

/// Addresses on the internet: not loopback, private, link-local, shared
/// (CGNAT), unspecified, multicast, documentation or reserved.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (b & 0xc0) == 64)
                || (a == 198 && (b & 0xfe) == 18)
                || (a == 192 && b == 0 && c == 0))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // NAT64 (DNS64 networks): the IPv4 address inside decides.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [hi, lo] = [s[6].to_be_bytes(), s[7].to_be_bytes()];
                return is_public(IpAddr::from([hi[0], hi[1], lo[0], lo[1]]));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// Resolves names, then drops the addresses the fence refuses: the check
/// is on the address actually connected to, so a name that resolves to
/// 127.0.0.1 (or changes its answer after a check) gets nowhere.
struct FencedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for FencedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = found
                .filter(|address| allow_private || is_public(address.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(FenceRefusal(format!(
                    "{host} resolves to no public address (MEDIA_ALLOW_PRIVATE_ADDRESSES)"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The fence's refusal inside a reqwest error, if that is what it is.
fn fence_refusal(error: &reqwest::Error) -> Option<String> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<FenceRefusal>() {
            return Some(refusal.0.clone());
        }
        source = cause.source();
    }
    None
}

/// Error bodies are small; more than this is not worth reading.
const ERROR_BODY_CAP: u64 = 1 << 20;
/// Transfers of large bodies get this rate on top of the timeout.
const SLOWEST_BYTES_PER_SEC: u64 = 1 << 20;

impl Graph {
    /// The default number (`WHATSAPP_PHONE_NUMBER_ID`), if one is set.
    pub fn default_number(&self) -> Option<&str> {
        self.inner.default_number.as_deref()
    }

    /// The numbers with a token of their own (`WHATSAPP_NUMBER_TOKENS`),
    /// in order.
    pub fn numbers_with_own_token(&self) -> impl Iterator<Item = &str> {
        self.inner.number_auth.keys().map(String::as_str)
    }

    /// Whether a token serves `number`: its own, or `WHATSAPP_ACCESS_TOKEN`.
    pub fn has_token_for(&self, number: &str) -> bool {
        self.token_for(number).is_ok()
    }

    /// Most messages to send per second per number (`SEND_RATE`).
    pub fn send_rate(&self) -> u32 {
        self.inner.send_rate
    }

    /// The bearer for `number`: its own token, else the global one.
    fn token_for(&self, number: &str) -> Result<&HeaderValue, GraphError> {
        self.inner
            .number_auth
            .get(number)
            .or(self.inner.global_auth.as_ref())
            .ok_or_else(|| GraphError::no_token(number))
    }

    /// The bearer for a number whose id goes into a path: refused before
    /// asking if the id could change the path.
    fn number_auth(&self, number: &str) -> Result<HeaderValue, GraphError> {
        if !valid_id(number) {
            return Err(GraphError::local(
                "Invalid phone number id",
                "the phone number id must be letters, digits, '.', '_' or '-'",
            ));
        }
        self.token_for(number).cloned()
    }

    /// POST `{url}/{version}/{number}/messages` with `Authorization: Bearer`
    /// (the number's token), the JSON body as given; returns Meta's
    /// `messages[0].id` (the wamid).
    pub async fn send_from(&self, number: &str, body: &Value) -> Result<String, GraphError> {
        let answer = self.post_messages(number, body).await?;
        match answer.pointer("/messages/0/id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(id.to_owned()),
            _ => Err(GraphError::unexpected(
                200,
                "no messages[0].id in Meta's answer",
            )),
        }
    }

    /// POST `.../{number}/messages` `{"messaging_product":"whatsapp","status":"read","message_id":id}`:
    /// `number` is the one the message was received on.
    pub async fn mark_read_from(&self, number: &str, message_id: &str) -> Result<(), GraphError> {
        let body = json!({
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
        });
        self.post_messages(number, &body).await.map(drop)
    }

    /// GET `{url}/{version}/{media_id}` → `{url, mime_type, sha256,
    /// file_size}`, with the token of `number`, the business number whose
    /// message the media is (`None`: the default number's, else
    /// `WHATSAPP_ACCESS_TOKEN`). [`Graph::open_media`] downloads it with
    /// the same token.
    pub async fn media_info_as(
        &self,
        number: Option<&str>,
        media_id: &str,
    ) -> Result<MediaInfo, GraphError> {
        if !valid_id(media_id) {
            return Err(GraphError::local(
                "Invalid media id",
                "the media id must be letters, digits, '.', '_' or '-'",
            ));
        }
        let auth = match number.or(self.default_number()) {
            Some(number) => self.token_for(number)?,
            None => self
                .inner
                .global_auth
                .as_ref()
                .ok_or_else(|| GraphError::no_token(""))?,
        }
        .clone();
        let request = self
            .inner
            .http
            .get(self.url(&[media_id]))
            .header(AUTHORIZATION, auth.clone());
        let info = self.call(request).await?;
        let Some(location) = info.get("url").and_then(Value::as_str) else {
            return Err(GraphError::unexpected(200, "no url in Meta's media answer"));
        };
        let Ok(url) = Url::parse(location) else {
            return Err(GraphError::unexpected(
                200,
                "the media url in Meta's answer is not a URL",
            ));
        };
        let file_size = match info.get("file_size") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        let mime_type = info
            .get("mime_type")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        Ok(MediaInfo {
            url,
            mime_type,
            file_size,
            auth,
        })
    }

    /// GET the media's `url` with the bearer [`Graph::media_info_as`] used,
    /// if `fence` lets the token go
    /// there (redirects included): the body, to read a chunk at a time.
    /// Refuses a `Content-Length` over `max_bytes`; the caller counts the
    /// rest (the length may be absent).
    pub async fn open_media(
        &self,
        fence: &MediaFence,
        info: &MediaInfo,
        max_bytes: u64,
    ) -> Result<MediaBody, MediaError> {
        fence.check(&info.url).map_err(MediaError::Refused)?;
        let sent = fence
            .inner
            .http
            .get(info.url.clone())
            .header(AUTHORIZATION, info.auth.clone())
            .timeout(self.transfer_timeout(max_bytes))
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                return Err(match fence_refusal(&e) {
                    Some(why) => MediaError::Refused(why),
                    None => MediaError::Graph(GraphError::transport(e)),
                });
            }
        };
        let status = response.status();
        if !status.is_success() {
            let body = read_capped(&mut response, ERROR_BODY_CAP)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            return Err(GraphError::from_response(status.as_u16(), &body).into());
        }
        if let Some(length) = response
            .content_length()
            .filter(|&length| length > max_bytes)
        {
            return Err(MediaError::TooLarge {
                size: Some(length),
                max_bytes,
            });
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        Ok(MediaBody {
            response,
            content_type,
        })
    }

    /// POST `{url}/{version}/{number}/media` with the number's token,
    /// multipart: `messaging_product=whatsapp`, `type=<mime>`, `file=<the
    /// file's length bytes>` (streamed, with its file name and type) →
    /// Meta's media `id`, to send from that number.
    pub async fn upload_from(
        &self,
        number: &str,
        file: tokio::fs::File,
        length: u64,
        mime_type: &str,
        file_name: &str,
    ) -> Result<String, GraphError> {
        let auth = self.number_auth(number)?;
        let file = Part::stream_with_length(reqwest::Body::from(file), length)
            .file_name(file_name.to_owned())
            .mime_str(mime_type)
            .map_err(|_| {
                GraphError::local(
                    "Invalid media type",
                    format!("{mime_type:?} is not a MIME type"),
                )
            })?;
        let form = Form::new()
            .text("messaging_product", "whatsapp")
            .text("type", mime_type.to_owned())
            .part("file", file);
        let request = self
            .inner
            .http
            .post(self.url(&[number, "media"]))
            .header(AUTHORIZATION, auth)
            .timeout(self.transfer_timeout(length))
            .multipart(form);
        let answer = self.call(request).await?;
        match answer.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(id.to_owned()),
            _ => Err(GraphError::unexpected(200, "no id in Meta's upload answer")),
        }
    }

    /// `{base}/{segments...}`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// The timeout plus time to move `bytes` at a slow but acceptable rate.
    fn transfer_timeout(&self, bytes: u64) -> Duration {
        self.inner.timeout + Duration::from_secs(bytes / SLOWEST_BYTES_PER_SEC)
    }

    async fn post_messages(&self, number: &str, body: &Value) -> Result<Value, GraphError> {
        let auth = self.number_auth(number)?;
        let request = self
            .inner
            .http
            .post(self.url(&[number, "messages"]))
            .header(AUTHORIZATION, auth)
            .json(body);
        self.call(request).await
    }

    /// Sends the request; a 2xx answer's JSON body, or the error.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, GraphError> {
        let mut response = request.send().await.map_err(GraphError::transport)?;
        let status = response.status().as_u16();
        let success = response.status().is_success();
        let body = match read_capped(&mut response, ERROR_BODY_CAP).await {
            Ok(Some(body)) => body,
            Ok(None) if success => {
                return Err(GraphError::unexpected(status, "Meta's answer is too long"));
            }
            Ok(None) => Bytes::new(),
            // Meta answered 2xx: what was asked is done, trying again could
            // send a message twice.
            Err(e) if success => {
                return Err(GraphError {
                    retry: false,
                    ..GraphError::transport(e)
                });
            }
            Err(_) => Bytes::new(),
        };
        if !success {
            return Err(GraphError::from_response(status, &body));
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(value) if value.get("error").is_some_and(Value::is_object) => {
                Err(GraphError::from_response(status, &body))
            }
            Ok(value) => Ok(value),
            Err(_) => Err(GraphError::unexpected(status, "Meta's answer is not JSON")),
        }
    }
}

/// Reads the body, at most `cap` bytes: `Ok(None)` when it is longer.
async fn read_capped(
    response: &mut reqwest::Response,
    cap: u64,
) -> Result<Option<Bytes>, reqwest::Error> {
    let initial = response.content_length().unwrap_or(0).min(cap).min(1 << 20);
    let mut buffer = BytesMut::with_capacity(usize::try_from(initial).unwrap_or(0));
    while let Some(chunk) = response.chunk().await? {
        if buffer.len() as u64 + chunk.len() as u64 > cap {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(Some(buffer.freeze()))
}

/// Media ids are Meta's (digits); refuse anything that could change the path.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Meta codes that mean throttling or a temporary outage: worth trying again.
const RETRY_CODES: [i64; 7] = [130429, 131056, 80007, 4, 131016, 1, 2];

/// What kind of failure a [`GraphError`] is, for callers that treat one
/// apart. (Fieldless: the error stays small enough to return by value.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphErrorKind {
    /// Meta answered: an error, or not what was asked for.
    Answered,
    /// No (complete) answer: timeout, connection or protocol error.
    Transport,
    /// Refused here before asking Meta (an invalid argument).
    Local,
    /// No access token serves the business number (none of its own in
    /// `WHATSAPP_NUMBER_TOKENS`, no `WHATSAPP_ACCESS_TOKEN`): nothing was
    /// asked. The message names the number (the caller knows it too).
    NoToken,
}

/// A failed Graph API call, as Meta described it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", describe(.http_status, .code, .title, .message, .details))]
pub struct GraphError {
    pub kind: GraphErrorKind,
    /// Worth trying again later: no answer / timeout / connection error,
    /// HTTP 429 or 5xx, or Meta codes that mean throttling or a temporary
    /// outage (130429, 131056, 80007, 4, 131016, 1, 2).
    pub retry: bool,
    pub http_status: Option<u16>,
    /// Meta's `error.code`.
    pub code: Option<i64>,
    /// `error.error_user_title`, else Meta's message without its `(#131047) `
    /// prefix, else e.g. `HTTP 502`.
    pub title: String,
    /// Meta's `error.message`, or the transport error's text.
    pub message: String,
    /// `error.error_data.details`.
    pub details: Option<String>,
    /// Meta's trace id (a `Box<str>`: with `source`, the error stays
    /// small enough to be returned by value).
    pub fbtrace_id: Option<Box<str>>,
    /// The transport's own error when there was no (complete) answer
    /// (without the URL), kept for logs and `source()` chains.
    pub source: Option<Arc<reqwest::Error>>,
}

fn describe(
    http_status: &Option<u16>,
    code: &Option<i64>,
    title: &str,
    message: &str,
    details: &Option<String>,
) -> String {
    let mut text = String::from("WhatsApp API");
    if let Some(code) = code {
        text.push_str(&format!(" error {code}"));
    }
    if let Some(status) = http_status {
        text.push_str(&format!(" (HTTP {status})"));
    }
    text.push_str(": ");
    text.push_str(title);
    if !message.is_empty() && message != title {
        text.push_str(&format!(": {message}"));
    }
    if let Some(details) = details {
        text.push_str(&format!(" ({details})"));
    }
    text
}

impl GraphError {
    /// The error for an answer with this HTTP status and body: Meta's
    /// `{"error":{...}}` when the body is one, else just the status.
    pub fn from_response(status: u16, body: &[u8]) -> Self {
        let error = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|mut v| v.get_mut("error").map(Value::take))
            .filter(Value::is_object)
            .unwrap_or(Value::Null);
        let text = |pointer: &str| {
            error
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let code = error.get("code").and_then(|c| match c {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        });
        let message = text("/message");
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let title = text("/error_user_title")
            .or_else(|| {
                message
                    .as_deref()
                    .map(strip_code_prefix)
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| format!("HTTP {status}"));
        let retry =
            status == 429 || status >= 500 || code.is_some_and(|c| RETRY_CODES.contains(&c));
        GraphError {
            kind: GraphErrorKind::Answered,
            retry,
            http_status: Some(status),
            code,
            title,
            message: message.unwrap_or_else(|| reason.to_owned()),
            details: text("/error_data/details"),
            fbtrace_id: text("/fbtrace_id").map(Into::into),
            source: None,
        }
    }

    /// No (complete) answer: timeout, connection or protocol error.
    fn transport(error: reqwest::Error) -> Self {
        let title = if error.is_timeout() {
            "Timeout"
        } else if error.is_connect() {
            "Connection failed"
        } else {
            "Request failed"
        };
        // Without the URL (media URLs carry signatures); the source chain
        // says what went wrong. Neither holds headers.
        let error = error.without_url();
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        GraphError {
            kind: GraphErrorKind::Transport,
            retry: true,
            http_status: None,
            code: None,
            title: title.to_owned(),
            message,
            details: None,
            fbtrace_id: None,
            source: Some(Arc::new(error)),
        }
    }

    /// A 2xx answer that is not what was asked for: not retried.
    fn unexpected(status: u16, message: &str) -> Self {
        GraphError {
            kind: GraphErrorKind::Answered,
            retry: false,
            http_status: Some(status),
            code: None,
            title: "Unexpected answer".to_owned(),
            message: message.to_owned(),
            details: None,
            fbtrace_id: None,
            source: None,
        }
    }

    /// No token serves `number`: nothing asked, not retried (a
    /// configuration change is needed).
    fn no_token(number: &str) -> Self {
        let message = if number.is_empty() {
            "no business number was named and WHATSAPP_ACCESS_TOKEN is not set".to_owned()
        } else {
            format!(
                "no access token serves business number {number}: set WHATSAPP_ACCESS_TOKEN, or a token for it in WHATSAPP_NUMBER_TOKENS"
            )
        };
        GraphError {
            kind: GraphErrorKind::NoToken,
            ..GraphError::local("No access token", message)
        }
    }

    /// Whether nothing was asked because no token serves the number.
    pub fn is_no_token(&self) -> bool {
        self.kind == GraphErrorKind::NoToken
    }

    /// Refused before asking Meta.
    fn local(title: &str, message: impl Into<String>) -> Self {
        GraphError {
            kind: GraphErrorKind::Local,
            retry: false,
            http_status: None,
            code: None,
            title: title.to_owned(),
            message: message.into(),
            details: None,
            fbtrace_id: None,
            source: None,
        }
    }

    /// The `errors` value stored on a failed message: `[{"code", "title",
    /// "message", "error_data": {"details"}, "fbtrace_id"}]`, absent parts
    /// omitted, `code` the HTTP status when Meta gave none.
    pub fn to_errors(&self) -> Value {
        let mut error = Map::new();
        if let Some(code) = self.code.or(self.http_status.map(i64::from)) {
            error.insert("code".into(), code.into());
        }
        error.insert("title".into(), self.title.clone().into());
        if !self.message.is_empty() {
            error.insert("message".into(), self.message.clone().into());
        }
        if let Some(details) = &self.details {
            error.insert("error_data".into(), json!({ "details": details }));
        }
        if let Some(fbtrace_id) = &self.fbtrace_id {
            error.insert("fbtrace_id".into(), fbtrace_id.to_string().into());
        }
        Value::Array(vec![Value::Object(error)])
    }
}

/// `"(#131047) Re-engagement message"` → `"Re-engagement message"`.
fn strip_code_prefix(message: &str) -> &str {
    message
        .strip_prefix("(#")
        .and_then(|rest| rest.split_once(')'))
        .filter(|(code, _)| !code.is_empty() && code.bytes().all(|b| b.is_ascii_digit()))
        .map_or(message, |(_, rest)| rest.trim_start())
}

/// Says at startup whether messages go to WhatsApp.
pub fn announce(graph: Option<&Graph>) {
    match graph {
        Some(graph) => {
            let own_tokens: Vec<&str> = graph.numbers_with_own_token().collect();
            tracing::info!(
                default_number = graph.default_number().unwrap_or("<none>"),
                numbers_with_own_token = %own_tokens.join(","),
                global_token = graph.inner.global_auth.is_some(),
                "messages are sent through the WhatsApp Cloud API"
            );
        }
        None => tracing::info!(
            "neither WHATSAPP_ACCESS_TOKEN nor WHATSAPP_NUMBER_TOKENS is set: messages are stored locally only, nothing is sent to WhatsApp"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, Uri};
    use axum::response::{IntoResponse, Response};

    fn meta_error(status: u16, error: Value) -> GraphError {
        GraphError::from_response(status, json!({ "error": error }).to_string().as_bytes())
    }

    #[test]
    fn outside_the_24_hour_window_is_permanent() {
        let e = meta_error(
            400,
            json!({"message":"(#131047) Re-engagement message","type":"OAuthException","code":131047,
                "error_data":{"messaging_product":"whatsapp","details":"Message failed to send because more than 24 hours have passed since the customer last replied to this number."},
                "error_subcode":2494010,"fbtrace_id":"A1b2"}),
        );
        assert!(!e.retry);
        assert_eq!(e.http_status, Some(400));
        assert_eq!(e.code, Some(131047));
        assert_eq!(e.title, "Re-engagement message");
        assert_eq!(e.message, "(#131047) Re-engagement message");
        assert_eq!(e.fbtrace_id.as_deref(), Some("A1b2"));
        assert_eq!(
            e.to_errors(),
            json!([{"code":131047,"title":"Re-engagement message","message":"(#131047) Re-engagement message",
                "error_data":{"details":"Message failed to send because more than 24 hours have passed since the customer last replied to this number."},
                "fbtrace_id":"A1b2"}])
        );
        let text = e.to_string();
        assert!(
            text.contains("131047") && text.contains("Re-engagement message"),
            "{text}"
        );
    }

    #[test]
    fn rate_limit_is_retried() {
        let e = meta_error(
            400,
            json!({"message":"(#130429) Rate limit hit","type":"OAuthException","code":130429,
                "error_data":{"messaging_product":"whatsapp","details":"Cloud API message throughput has been reached."},
                "fbtrace_id":"Bx"}),
        );
        assert!(e.retry);
        assert_eq!(e.title, "Rate limit hit");
        // HTTP 429 alone is enough, and every throttling / outage code.
        assert!(GraphError::from_response(429, b"").retry);
        for code in RETRY_CODES {
            assert!(
                meta_error(400, json!({"message":"x","code":code})).retry,
                "{code}"
            );
        }
    }

    #[test]
    fn undeliverable_is_permanent_and_user_title_wins() {
        let e = meta_error(
            400,
            json!({"message":"(#131026) Message undeliverable","code":131026,"error_user_title":"Message Undeliverable",
                "error_data":{"details":"Unable to deliver message."}}),
        );
        assert!(!e.retry);
        assert_eq!(e.code, Some(131026));
        assert_eq!(e.title, "Message Undeliverable");
        assert_eq!(
            e.to_errors(),
            json!([{"code":131026,"title":"Message Undeliverable","message":"(#131026) Message undeliverable",
                "error_data":{"details":"Unable to deliver message."}}])
        );
    }

    #[test]
    fn expired_token_is_permanent() {
        let e = meta_error(
            401,
            json!({"message":"Error validating access token: Session has expired on Friday, 01-Jan-21 00:00:00 PST.",
                "type":"OAuthException","code":190,"error_subcode":463,"fbtrace_id":"Cz"}),
        );
        assert!(!e.retry);
        assert_eq!((e.http_status, e.code), (Some(401), Some(190)));
        assert!(e.title.starts_with("Error validating access token"));
        assert_eq!(e.to_errors()[0]["code"], 190);
        assert!(e.to_errors()[0].get("error_data").is_none());
    }

    #[test]
    fn server_error_with_html_is_retried() {
        let e = GraphError::from_response(
            500,
            b"<html><body><h1>500 Internal Server Error</h1></body></html>",
        );
        assert!(e.retry);
        assert_eq!((e.http_status, e.code), (Some(500), None));
        assert_eq!(e.title, "HTTP 500");
        assert_eq!(e.message, "Internal Server Error");
        assert_eq!(
            e.to_errors(),
            json!([{"code":500,"title":"HTTP 500","message":"Internal Server Error"}])
        );
        assert!(!GraphError::from_response(404, b"not found").retry);
    }

    #[test]
    fn code_prefix_is_stripped_only_when_it_is_one() {
        assert_eq!(
            strip_code_prefix("(#100) Invalid parameter"),
            "Invalid parameter"
        );
        assert_eq!(strip_code_prefix("(#abc) x"), "(#abc) x");
        assert_eq!(strip_code_prefix("Plain"), "Plain");
    }

    fn config(url: &str, token: Option<&str>, phone: Option<&str>) -> GraphConfig {
        GraphConfig {
            whatsapp_access_token: token.map(str::to_owned),
            whatsapp_number_tokens: None,
            whatsapp_phone_number_id: phone.map(str::to_owned),
            graph_api_url: url.to_owned(),
            graph_api_version: "v23.0".to_owned(),
            graph_timeout_secs: 1,
            send_rate: 20,
        }
    }

    #[test]
    fn flags_and_defaults() {
        use clap::{CommandFactory, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            graph: GraphConfig,
        }
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["x", "--graph-timeout-secs", "3", "--send-rate", "5"]).unwrap();
        assert_eq!(cli.graph.graph_timeout_secs, 3);
        assert_eq!(cli.graph.send_rate, 5);
        assert_eq!(cli.graph.graph_api_version, "v23.0");
        assert!(Cli::try_parse_from(["x", "--send-rate", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--graph-timeout-secs", "0"]).is_err());
    }

    #[test]
    fn client_needs_a_token_then_a_phone_number_id_and_a_url() {
        let url = "https://graph.facebook.com";
        assert!(config(url, None, Some("1")).client().unwrap().is_none());
        assert!(config(url, Some(""), Some("1")).client().unwrap().is_none());
        let e = config(url, Some("SECRET-TOKEN"), None)
            .client()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("WHATSAPP_PHONE_NUMBER_ID") && !e.contains("SECRET"),
            "{e}"
        );
        assert!(config("not a url", Some("t"), Some("1")).client().is_err());
        assert!(config("ftp://x", Some("t"), Some("1")).client().is_err());
        let e = config(url, Some("bad\ntoken"), Some("1"))
            .client()
            .unwrap_err()
            .to_string();
        assert!(!e.contains("bad"), "{e}");
        let graph = config(url, Some("SECRET-TOKEN"), Some("123"))
            .client()
            .unwrap()
            .unwrap();
        assert_eq!(graph.default_number(), Some("123"));
        assert_eq!(graph.send_rate(), 20);
        assert_eq!(
            graph.url(&["123", "messages"]).as_str(),
            "https://graph.facebook.com/v23.0/123/messages"
        );
        assert!(!format!("{graph:?}").contains("SECRET"));
        let graph = config("http://proxy/graph/", Some("t"), Some("1"))
            .client()
            .unwrap()
            .unwrap();
        assert_eq!(graph.url(&["m"]).as_str(), "http://proxy/graph/v23.0/m");
        assert!(!valid_id("..") && !valid_id("a/b") && !valid_id("") && valid_id("1234567890"));
    }

    /// One request as the fake Graph API saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: Method,
        path: String,
        auth: Option<String>,
        content_type: Option<String>,
        body: Bytes,
    }

    #[derive(Clone)]
    struct Fake {
        base: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    const TOKEN: &str = "EAAG-test-token";
    const PHONE: &str = "106540352242922";
    /// A second number with its own token, and a third served by the global one.
    const OWN: &str = "106540352242923";
    const OWN_TOKEN: &str = "EAAG-own-number-token";
    const THIRD: &str = "106540352242924";
    const JPEG: &[u8] = b"\xff\xd8\xff\xe0 not really a jpeg";

    fn json_response(status: u16, body: Value) -> Response {
        let status = StatusCode::from_u16(status).unwrap();
        (status, axum::Json(body)).into_response()
    }

    async fn fake(
        State(fake): State<Fake>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let auth = header("authorization");
        fake.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            auth: auth.clone(),
            content_type: header("content-type"),
            body: body.clone(),
        });
        let known = [TOKEN, OWN_TOKEN].map(|token| format!("Bearer {token}"));
        if !auth.as_ref().is_some_and(|auth| known.contains(auth)) {
            return json_response(
                401,
                json!({"error":{"message":"Invalid OAuth access token.","code":190}}),
            );
        }
        // Any number: which one (and which token) the tests check in `seen`.
        let number_path = |path: &str, leaf: &str| {
            path.strip_prefix("/v23.0/")
                .and_then(|rest| rest.strip_suffix(leaf))
                .and_then(|number| number.strip_suffix('/'))
                .is_some_and(|number| {
                    !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
                })
        };
        let info = |id: &str, size: usize| {
            json_response(
                200,
                json!({"url": format!("{}/dl/{id}?ext=1&hash=abc", fake.base), "mime_type": "image/jpeg",
                    "sha256": "x", "file_size": size, "id": id, "messaging_product": "whatsapp"}),
            )
        };
        match (method, uri.path()) {
            (Method::POST, path) if number_path(path, "messages") => {
                let body: Value = serde_json::from_slice(&body).unwrap();
                match (body["status"].as_str(), body["to"].as_str()) {
                    (Some("read"), _) => json_response(200, json!({"success": true})),
                    (_, Some("15550000001")) => json_response(
                        400,
                        json!({"error":{"message":"(#131047) Re-engagement message","type":"OAuthException","code":131047,
                            "error_data":{"messaging_product":"whatsapp","details":"24 hours"},"fbtrace_id":"A1b2"}}),
                    ),
                    (_, Some("15550000002")) => {
                        json_response(200, json!({"messaging_product":"whatsapp"}))
                    }
                    (_, Some("15550000003")) => {
                        (StatusCode::BAD_GATEWAY, "<html>502</html>").into_response()
                    }
                    (_, Some("15550000004")) => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        json_response(200, json!({}))
                    }
                    _ => json_response(
                        200,
                        json!({"messaging_product":"whatsapp","contacts":[{"input":"x","wa_id":"x"}],
                            "messages":[{"id":"wamid.SENT1"}]}),
                    ),
                }
            }
            (Method::POST, path) if number_path(path, "media") => {
                let text = String::from_utf8_lossy(&body);
                let ok = text.contains("name=\"messaging_product\"\r\n\r\nwhatsapp\r\n")
                    && text.contains("name=\"type\"\r\n\r\nimage/jpeg\r\n")
                    && text.contains(
                        "name=\"file\"; filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n",
                    )
                    && body.windows(JPEG.len()).any(|w| w == JPEG);
                if ok {
                    json_response(200, json!({"id": "uploaded-1"}))
                } else {
                    json_response(400, json!({"error":{"message":"bad multipart","code":100}}))
                }
            }
            (Method::GET, "/v23.0/m1") => info("m1", JPEG.len()),
            (Method::GET, "/v23.0/big") => info("big", 10_000),
            (Method::GET, "/v23.0/liar") => info("liar", 5),
            (Method::GET, "/v23.0/stream") => json_response(
                200,
                json!({"url": format!("{}/dl/stream", fake.base), "mime_type": "video/mp4", "id": "stream"}),
            ),
            (Method::GET, "/v23.0/gone") => json_response(
                404,
                json!({"error":{"message":"Unsupported get request.","type":"GraphMethodException","code":100,
                    "error_subcode":33,"fbtrace_id":"G1"}}),
            ),
            (Method::GET, "/dl/m1") => ([("content-type", "image/jpeg")], JPEG).into_response(),
            (Method::GET, "/dl/liar") => vec![7u8; 5000].into_response(),
            (Method::GET, "/dl/stream") => {
                let chunks = (0..50).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 100])));
                Body::from_stream(futures::stream::iter(chunks)).into_response()
            }
            _ => json_response(404, json!({"error":{"message":"no route","code":100}})),
        }
    }

    async fn start() -> (Graph, Fake) {
        let state = start_fake().await;
        let graph = config(&format!("{}/", state.base), Some(TOKEN), Some(PHONE))
            .client()
            .unwrap()
            .unwrap();
        (graph, state)
    }

    async fn start_fake() -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Fake {
            base: base.clone(),
            seen: Arc::default(),
        };
        let app = Router::new().fallback(fake).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        state
    }

    fn take(fake: &Fake) -> Vec<Seen> {
        std::mem::take(&mut *fake.seen.lock().unwrap())
    }

    #[tokio::test]
    async fn send_posts_the_body_with_the_bearer_token_and_returns_the_wamid() {
        let (graph, fake) = start().await;
        let body = json!({"messaging_product":"whatsapp","recipient_type":"individual","to":"15551234567",
            "type":"text","text":{"body":"Hello"},"context":{"message_id":"wamid.IN"}});
        assert_eq!(graph.send_from(PHONE, &body).await.unwrap(), "wamid.SENT1");
        let seen = take(&fake);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, Method::POST);
        assert_eq!(seen[0].path, format!("/v23.0/{PHONE}/messages"));
        assert_eq!(
            seen[0].auth.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
        assert_eq!(
            serde_json::from_slice::<Value>(&seen[0].body).unwrap(),
            body
        );

        graph.mark_read_from(PHONE, "wamid.IN").await.unwrap();
        let seen = take(&fake);
        assert_eq!(seen[0].path, format!("/v23.0/{PHONE}/messages"));
        assert_eq!(
            serde_json::from_slice::<Value>(&seen[0].body).unwrap(),
            json!({"messaging_product":"whatsapp","status":"read","message_id":"wamid.IN"})
        );
    }

    #[tokio::test]
    async fn send_failures_are_classified() {
        let (graph, fake) = start().await;
        let to = |n: &str| json!({"messaging_product":"whatsapp","to":n,"type":"text","text":{"body":"x"}});

        let e = graph
            .send_from(PHONE, &to("15550000001"))
            .await
            .unwrap_err();
        assert!(!e.retry);
        assert_eq!((e.http_status, e.code), (Some(400), Some(131047)));
        assert_eq!(e.details.as_deref(), Some("24 hours"));

        let e = graph
            .send_from(PHONE, &to("15550000002"))
            .await
            .unwrap_err();
        assert!(!e.retry, "a 200 without an id is not retried");
        assert_eq!(e.http_status, Some(200));

        let e = graph
            .send_from(PHONE, &to("15550000003"))
            .await
            .unwrap_err();
        assert!(e.retry);
        assert_eq!((e.http_status, e.title.as_str()), (Some(502), "HTTP 502"));

        let e = graph
            .send_from(PHONE, &to("15550000004"))
            .await
            .unwrap_err();
        assert!(e.retry, "a timeout is retried");
        assert_eq!((e.http_status, e.title.as_str()), (None, "Timeout"));

        // A wrong token: 401 code 190, not retried, and the token is nowhere.
        let wrong = config(&fake.base, Some("EAAG-wrong-secret"), Some(PHONE));
        let e = wrong
            .client()
            .unwrap()
            .unwrap()
            .send_from(PHONE, &to("1"))
            .await
            .unwrap_err();
        assert!(!e.retry);
        assert_eq!((e.http_status, e.code), (Some(401), Some(190)));
        let shown = format!("{e} {e:?} {}", e.to_errors());
        assert!(!shown.contains("wrong-secret"), "{shown}");
    }

    #[tokio::test]
    async fn no_server_is_retried_without_the_token_in_the_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let graph = config(&url, Some(TOKEN), Some(PHONE))
            .client()
            .unwrap()
            .unwrap();
        let e = graph.send_from(PHONE, &json!({})).await.unwrap_err();
        assert!(e.retry);
        assert_eq!(e.http_status, None);
        assert!(!format!("{e} {e:?}").contains(TOKEN));
    }

    /// Lets the token go to the fake on 127.0.0.1 (plain http).
    fn test_fence() -> MediaFence {
        MediaFence::new(&["127.0.0.1".to_owned()], true, Duration::from_secs(1)).unwrap()
    }

    /// The whole download, the way the API streams it: info, then chunks.
    async fn download(
        graph: &Graph,
        fence: &MediaFence,
        media_id: &str,
        max_bytes: u64,
    ) -> Result<(Vec<u8>, Option<String>), MediaError> {
        let info = graph.media_info_as(None, media_id).await?;
        if let Some(size) = info.file_size.filter(|&size| size > max_bytes) {
            return Err(MediaError::TooLarge {
                size: Some(size),
                max_bytes,
            });
        }
        let mut body = graph.open_media(fence, &info, max_bytes).await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.chunk().await? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > max_bytes {
                return Err(MediaError::TooLarge {
                    size: None,
                    max_bytes,
                });
            }
        }
        Ok((bytes, info.mime_type.or(body.content_type)))
    }

    #[tokio::test]
    async fn media_is_downloaded_in_two_steps_with_the_token() {
        let (graph, fake) = start().await;
        let fence = test_fence();
        let (bytes, mime_type) = download(&graph, &fence, "m1", 1000).await.unwrap();
        assert_eq!(bytes, JPEG);
        assert_eq!(mime_type.as_deref(), Some("image/jpeg"));
        let seen = take(&fake);
        assert_eq!(seen.len(), 2);
        assert_eq!(
            (seen[0].method.clone(), seen[0].path.as_str()),
            (Method::GET, "/v23.0/m1")
        );
        assert_eq!(
            (seen[1].method.clone(), seen[1].path.as_str()),
            (Method::GET, "/dl/m1?ext=1&hash=abc")
        );
        for s in &seen {
            assert_eq!(s.auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
        }

        // An expired or unknown id: Meta's error, not retried.
        let Err(MediaError::Graph(e)) = download(&graph, &fence, "gone", 1000).await else {
            panic!("a Graph error");
        };
        assert!(!e.retry);
        assert_eq!((e.http_status, e.code), (Some(404), Some(100)));
        // Ids that could change the path are refused before asking.
        take(&fake);
        assert!(graph.media_info_as(None, "../v23.0/m1").await.is_err());
        assert!(take(&fake).is_empty());
    }

    #[tokio::test]
    async fn media_over_the_cap_is_refused() {
        let (graph, fake) = start().await;
        let fence = test_fence();
        let too_large = |result: Result<(Vec<u8>, Option<String>), MediaError>| {
            matches!(result, Err(MediaError::TooLarge { .. }))
        };
        // By Meta's file_size: not even downloaded.
        assert!(too_large(download(&graph, &fence, "big", 1000).await));
        assert_eq!(take(&fake).len(), 1);
        // file_size lies; Content-Length tells.
        assert!(too_large(download(&graph, &fence, "liar", 1000).await));
        // No size anywhere: counted while reading.
        assert!(too_large(download(&graph, &fence, "stream", 1000).await));
        let (bytes, mime_type) = download(&graph, &fence, "stream", 5000).await.unwrap();
        assert_eq!(bytes.len(), 5000);
        assert_eq!(mime_type.as_deref(), Some("video/mp4"));
    }

    #[tokio::test]
    async fn the_fence_keeps_the_token_from_other_hosts() {
        let (graph, fake) = start().await;
        // Meta's hosts only (the default): the fake on 127.0.0.1 is refused
        // before anything is sent.
        let meta: Vec<String> = META_MEDIA_HOSTS.split(',').map(str::to_owned).collect();
        let fence = MediaFence::new(&meta, false, Duration::from_secs(1)).unwrap();
        let Err(MediaError::Refused(why)) = download(&graph, &fence, "m1", 1000).await else {
            panic!("refused");
        };
        assert!(why.contains("127.0.0.1"), "{why}");
        assert_eq!(take(&fake).len(), 1, "only the Graph API was asked");
        // Allowed by name but private: refused too, unless allowed.
        let fence =
            MediaFence::new(&["127.0.0.1".to_owned()], false, Duration::from_secs(1)).unwrap();
        assert!(matches!(
            download(&graph, &fence, "m1", 1000).await,
            Err(MediaError::Refused(_))
        ));
        assert_eq!(take(&fake).len(), 1);
    }

    #[test]
    fn fence_rules() {
        let fence = |hosts: &str, allow_private: bool| {
            let hosts: Vec<String> = hosts.split(',').map(str::to_owned).collect();
            MediaFence::new(&hosts, allow_private, Duration::from_secs(1)).unwrap()
        };
        let allowed =
            |fence: &MediaFence, url: &str| fence.check(&Url::parse(url).unwrap()).is_ok();
        let meta = fence(META_MEDIA_HOSTS, false);
        assert!(allowed(
            &meta,
            "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1&ext=2&hash=3"
        ));
        assert!(allowed(&meta, "https://scontent.xx.fbcdn.net/v/x.jpg"));
        assert!(allowed(&meta, "https://MMG.WhatsApp.net./d/f"));
        assert!(
            !allowed(&meta, "http://lookaside.fbsbx.com/x"),
            "https only"
        );
        assert!(
            !allowed(&meta, "https://fbcdn.net/x"),
            "subdomains, not the domain"
        );
        assert!(!allowed(&meta, "https://evilfbcdn.net/x"));
        assert!(!allowed(
            &meta,
            "https://lookaside.fbsbx.com.evil.example/x"
        ));
        assert!(!allowed(&meta, "https://127.0.0.1/x"));
        assert!(!allowed(&meta, "ftp://lookaside.fbsbx.com/x"));
        // Named explicitly, an address is still refused when private...
        let local = fence("127.0.0.1, [::1] ,,", false);
        assert!(!allowed(&local, "https://127.0.0.1/x"));
        assert!(!allowed(&local, "https://0x7f.0.0.1/x"));
        // ...unless private addresses are allowed, and then plain http too.
        let local = fence("127.0.0.1,[::1]", true);
        assert!(allowed(&local, "http://127.0.0.1:8080/x"));
        assert!(allowed(&local, "http://[::1]:8080/x"));
        assert!(!allowed(&local, "http://localhost:8080/x"));
        assert!(!allowed(&local, "http://127.0.0.2/x"));
        // Public names keep https even then.
        let both = fence("media.example.com,127.0.0.1", true);
        assert!(!allowed(&both, "http://media.example.com/x"));
        assert!(allowed(&both, "https://media.example.com/x"));
        for bad in [
            "https://lookaside.fbsbx.com",
            "host:443",
            "*.1.2.3.4",
            "a/b",
            "*",
        ] {
            assert!(
                MediaFence::new(&[bad.to_owned()], false, Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
        for (ip, public) in [
            ("8.8.8.8", true),
            ("157.240.1.1", true),
            ("2a03:2880::1", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("0.0.0.0", false),
            ("::1", false),
            ("fe80::1", false),
            ("fd00::1", false),
            ("::ffff:127.0.0.1", false),
            ("64:ff9b::a9fe:a9fe", false),
            ("64:ff9b::808:808", true),
        ] {
            assert_eq!(is_public(ip.parse().unwrap()), public, "{ip}");
        }
    }

    #[tokio::test]
    async fn upload_sends_a_multipart_form() {
        let (graph, fake) = start().await;
        let path = std::env::temp_dir().join(format!("graph-upload-{}.jpg", std::process::id()));
        tokio::fs::write(&path, JPEG).await.unwrap();
        let file = || async { tokio::fs::File::open(&path).await.unwrap() };
        let id = graph
            .upload_from(
                PHONE,
                file().await,
                JPEG.len() as u64,
                "image/jpeg",
                "photo.jpg",
            )
            .await
            .unwrap();
        assert_eq!(id, "uploaded-1");
        let seen = take(&fake);
        assert_eq!(
            (seen[0].method.clone(), seen[0].path.clone()),
            (Method::POST, format!("/v23.0/{PHONE}/media"))
        );
        assert!(
            seen[0]
                .content_type
                .as_deref()
                .unwrap()
                .starts_with("multipart/form-data; boundary=")
        );
        let e = graph
            .upload_from(PHONE, file().await, 0, "not a mime", "x")
            .await
            .unwrap_err();
        assert!(!e.retry);
        tokio::fs::remove_file(&path).await.ok();
    }

    fn with_number_tokens(mut config: GraphConfig, tokens: &str) -> GraphConfig {
        config.whatsapp_number_tokens = Some(tokens.to_owned());
        config
    }

    #[test]
    fn number_tokens_are_parsed_and_validated_without_showing_tokens() {
        assert!(parse_number_tokens(None).unwrap().is_empty());
        assert!(parse_number_tokens(Some(" , ")).unwrap().is_empty());
        assert_eq!(
            parse_number_tokens(Some(" 111=EAAG-one , 222 = EAAG=two,")).unwrap(),
            [
                ("111".to_owned(), "EAAG-one".to_owned()),
                ("222".to_owned(), "EAAG=two".to_owned()),
            ]
        );
        for (value, says) in [
            (
                "111=SECRET-A,SECRET-B",
                "entry 2 is not <phone_number_id>=<token>",
            ),
            (
                "SECRET-A=111",
                "entry 1 does not start with a phone number id",
            ),
            (
                "1a1=SECRET-A",
                "entry 1 does not start with a phone number id",
            ),
            ("=SECRET-A", "entry 1 does not start with a phone number id"),
            ("111=SECRET-A,222= ", "the token of 222 (entry 2) is empty"),
            ("111=SECRET-A,111=SECRET-B", "111 is given twice"),
        ] {
            let e = parse_number_tokens(Some(value)).unwrap_err().to_string();
            assert!(e.contains(says), "{value}: {e}");
            assert!(!e.contains("SECRET"), "{value}: {e}");
        }
        let e = with_number_tokens(config("https://g", None, None), "111=SECRET\u{7f}")
            .client()
            .unwrap_err()
            .to_string();
        assert!(e.contains("111") && !e.contains("SECRET"), "{e}");
    }

    #[test]
    fn number_tokens_alone_make_a_client_without_a_default_number() {
        let url = "https://graph.facebook.com";
        let graph = with_number_tokens(config(url, None, None), "111=SECRET-ONE")
            .client()
            .unwrap()
            .unwrap();
        assert_eq!(graph.default_number(), None);
        assert_eq!(graph.default_number(), None);
        assert!(graph.has_token_for("111"));
        assert!(!graph.has_token_for("222"));
        // With the global token, the default number is still required.
        let e = with_number_tokens(config(url, Some("SECRET-G"), None), "111=SECRET-ONE")
            .client()
            .unwrap_err()
            .to_string();
        assert!(e.contains("WHATSAPP_PHONE_NUMBER_ID"), "{e}");
        let graph =
            with_number_tokens(config(url, Some("SECRET-G"), Some("999")), "111=SECRET-ONE")
                .client()
                .unwrap()
                .unwrap();
        assert_eq!(graph.default_number(), Some("999"));
        assert!(graph.has_token_for("111") && graph.has_token_for("222"));
        // An empty list is no token at all.
        assert!(
            with_number_tokens(config(url, None, None), " ")
                .client()
                .unwrap()
                .is_none()
        );
        let grace = Duration::from_secs(1);
        assert!(with_number_tokens(config(url, None, None), "111=t").shutdown_grace(grace) > grace);
        assert_eq!(config(url, None, None).shutdown_grace(grace), grace);
    }

    #[test]
    fn debug_output_shows_no_token() {
        let config = with_number_tokens(
            config("https://g", Some("SECRET-GLOBAL"), Some("999")),
            "111=SECRET-ONE",
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("999"), "{shown}");
        let graph = config.client().unwrap().unwrap();
        let shown = format!("{graph:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("111") && shown.contains("999"), "{shown}");
    }

    /// The global token and `OWN`'s own, against the fake.
    fn two_token_client(fake: &Fake) -> Graph {
        with_number_tokens(
            config(&fake.base, Some(TOKEN), Some(PHONE)),
            &format!("{OWN}={OWN_TOKEN}"),
        )
        .client()
        .unwrap()
        .unwrap()
    }

    #[tokio::test]
    async fn each_number_is_sent_through_with_its_own_token_or_the_global_one() {
        let fake = start_fake().await;
        let graph = two_token_client(&fake);
        let body = json!({"messaging_product":"whatsapp","to":"15551234567","type":"text","text":{"body":"x"}});
        let bearer = |token: &str| Some(format!("Bearer {token}"));
        for (number, token) in [(PHONE, TOKEN), (OWN, OWN_TOKEN), (THIRD, TOKEN)] {
            assert_eq!(graph.send_from(number, &body).await.unwrap(), "wamid.SENT1");
            graph.mark_read_from(number, "wamid.IN").await.unwrap();
            let seen = take(&fake);
            assert_eq!(seen.len(), 2);
            for s in &seen {
                assert_eq!(s.path, format!("/v23.0/{number}/messages"));
                assert_eq!(s.auth, bearer(token), "{number}");
            }
        }
        // The default number's wrappers.
        graph.send_from(PHONE, &body).await.unwrap();
        let seen = take(&fake);
        assert_eq!(seen[0].path, format!("/v23.0/{PHONE}/messages"));
        assert_eq!(seen[0].auth, bearer(TOKEN));
        // A number id that could change the path is refused before asking.
        let e = graph.send_from("../m1", &body).await.unwrap_err();
        assert_eq!(e.kind, GraphErrorKind::Local);
        assert!(take(&fake).is_empty());

        // Media of a number's message: its token, for both steps.
        let fence = test_fence();
        let info = graph.media_info_as(Some(OWN), "m1").await.unwrap();
        let mut body = graph.open_media(&fence, &info, 1000).await.unwrap();
        while body.chunk().await.unwrap().is_some() {}
        assert!(!format!("{info:?}").contains(OWN_TOKEN));
        let seen = take(&fake);
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|s| s.auth == bearer(OWN_TOKEN)), "{seen:?}");
        graph.media_info_as(None, "m1").await.unwrap();
        assert_eq!(take(&fake)[0].auth, bearer(TOKEN));
    }

    #[tokio::test]
    async fn a_number_without_a_token_is_a_typed_error_and_nothing_is_asked() {
        let fake = start_fake().await;
        let graph = with_number_tokens(
            config(&fake.base, None, None),
            &format!("{OWN}={OWN_TOKEN}"),
        )
        .client()
        .unwrap()
        .unwrap();
        let body =
            json!({"messaging_product":"whatsapp","to":"1","type":"text","text":{"body":"x"}});
        let e = graph.send_from(PHONE, &body).await.unwrap_err();
        assert_eq!(e.kind, GraphErrorKind::NoToken);
        assert!(e.is_no_token() && !e.retry);
        let shown = format!("{e} {e:?} {}", e.to_errors());
        assert!(
            shown.contains(PHONE) && shown.contains("WHATSAPP_NUMBER_TOKENS"),
            "{shown}"
        );
        assert!(!shown.contains(OWN_TOKEN), "{shown}");
        assert!(
            graph
                .mark_read_from(PHONE, "wamid.IN")
                .await
                .unwrap_err()
                .is_no_token()
        );
        assert!(
            graph
                .media_info_as(Some(PHONE), "m1")
                .await
                .unwrap_err()
                .is_no_token()
        );
        // No default number and no global token: the media of an unknown number.
        assert!(
            graph
                .media_info_as(None, "m1")
                .await
                .unwrap_err()
                .is_no_token()
        );
        // Nor does a number without a token of its own.
        assert!(
            graph
                .send_from(PHONE, &body)
                .await
                .unwrap_err()
                .is_no_token()
        );
        assert!(take(&fake).is_empty(), "nothing was asked");
        // Its own number works.
        graph.send_from(OWN, &body).await.unwrap();
        assert_eq!(
            take(&fake)[0].auth.as_deref(),
            Some(format!("Bearer {OWN_TOKEN}").as_str())
        );
    }

    #[tokio::test]
    async fn upload_from_goes_to_the_number_with_its_token() {
        let fake = start_fake().await;
        let graph = two_token_client(&fake);
        let path =
            std::env::temp_dir().join(format!("graph-upload-from-{}.jpg", std::process::id()));
        tokio::fs::write(&path, JPEG).await.unwrap();
        let file = tokio::fs::File::open(&path).await.unwrap();
        let id = graph
            .upload_from(OWN, file, JPEG.len() as u64, "image/jpeg", "photo.jpg")
            .await
            .unwrap();
        assert_eq!(id, "uploaded-1");
        let seen = take(&fake);
        assert_eq!(seen[0].path, format!("/v23.0/{OWN}/media"));
        assert_eq!(
            seen[0].auth.as_deref(),
            Some(format!("Bearer {OWN_TOKEN}").as_str())
        );
        tokio::fs::remove_file(&path).await.ok();
    }
}
