use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderMap as PbHeaderMap, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{Peer, Request as PbRequest};

use super::*;

fn http(method: &str, scheme: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> HttpRequest {
    HttpRequest {
        method: method.into(),
        scheme: scheme.into(),
        host: host.into(),
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
        ..HttpRequest::default()
    }
}

fn check(http: HttpRequest) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(PbRequest {
                http: Some(http),
                ..PbRequest::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

fn described(http: HttpRequest) -> (request::Parts, &'static str) {
    describe_check(&check(http)).unwrap_or_else(|e| panic!("{e}"))
}

fn refused(http: HttpRequest) -> DescribeError {
    match describe_check(&check(http)) {
        Ok((head, _)) => panic!("described as {} {}", head.method, head.uri),
        Err(e) => e,
    }
}

#[test]
fn a_check_request_describes_the_request_as_the_http_dialects_do() {
    let (head, scheme) = described(http(
        "POST",
        "https",
        "app.example.com",
        "/api/items?x=1",
        &[
            (":authority", "app.example.com"),
            (":method", "POST"),
            (":path", "/api/items?x=1"),
            ("authorization", "Bearer t"),
            ("connection", "authorization"),
            ("x-auth-request-user", "mallory"),
        ],
    ));
    assert_eq!(scheme, "https");
    assert_eq!(head.method, Method::POST);
    assert_eq!(head.uri, "/api/items?x=1");
    assert_eq!(head.version, Version::HTTP_11);
    assert_eq!(head.headers[header::HOST], "app.example.com");
    // Pseudo-headers are not headers; hop-by-hop ones are out before the decision (a
    // Connection naming the credentials does not remove them: it is itself removed first).
    assert!(head.headers.keys().all(|k| !k.as_str().starts_with(':')));
    assert!(head.headers.get(header::CONNECTION).is_none());
    assert_eq!(head.headers[header::AUTHORIZATION], "Bearer t");
    // The client's copy stays in the description (the engine never reads it); the answer's
    // headers_to_remove deals with it.
    assert_eq!(head.headers["x-auth-request-user"], "mallory");
    // A spelling the proxy refuses is passed on as sent: the engine refuses it.
    let (head, _) = described(http("GET", "http", "a", "/x/%2e%2e/admin", &[]));
    assert_eq!(head.uri, "/x/%2e%2e/admin");
}

#[test]
fn raw_header_maps_keep_repeated_headers() {
    let mut h = http("GET", "HTTPS", "a", "/", &[]);
    let raw = |k: &str, v: &str| PbHeaderValue {
        key: k.into(),
        raw_value: v.as_bytes().to_vec(),
        ..PbHeaderValue::default()
    };
    h.header_map = Some(PbHeaderMap {
        headers: vec![raw(":path", "/"), raw("cookie", "a=1"), raw("cookie", "b=2")],
    });
    let (head, scheme) = described(h);
    assert_eq!(scheme, "https");
    let cookies: Vec<_> = head.headers.get_all(header::COOKIE).iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
}

#[test]
fn missing_contradictory_or_huge_descriptions_are_refused() {
    let ok = || http("GET", "https", "app.example.com", "/x", &[]);
    assert_eq!(
        describe_check(&CheckRequest::default()).err(),
        Some(DescribeError::Missing("attributes.request.http"))
    );
    let cases: Vec<(HttpRequest, DescribeError)> = vec![
        (HttpRequest { method: String::new(), ..ok() }, DescribeError::Missing("method")),
        (HttpRequest { method: "G ET".into(), ..ok() }, DescribeError::Malformed("method")),
        (HttpRequest { scheme: String::new(), ..ok() }, DescribeError::Missing("scheme")),
        (HttpRequest { scheme: "ftp".into(), ..ok() }, DescribeError::Malformed("scheme")),
        (HttpRequest { host: String::new(), ..ok() }, DescribeError::Missing("host")),
        (HttpRequest { host: "a\nb".into(), ..ok() }, DescribeError::Malformed("host")),
        (HttpRequest { host: "a".repeat(MAX_HOST + 1), ..ok() }, DescribeError::Malformed("host")),
        (HttpRequest { path: String::new(), ..ok() }, DescribeError::Missing("path")),
        (HttpRequest { path: "x".into(), ..ok() }, DescribeError::Malformed("path")),
        (HttpRequest { path: "*".into(), ..ok() }, DescribeError::Malformed("path")),
        (HttpRequest { path: "/api#x".into(), ..ok() }, DescribeError::Malformed("path")),
        (HttpRequest { path: "/a b".into(), ..ok() }, DescribeError::Malformed("path")),
        (
            HttpRequest { path: format!("/{}", "x".repeat(MAX_ORIGINAL_URI)), ..ok() },
            DescribeError::Malformed("path"),
        ),
        (HttpRequest { query: "a=1".into(), ..ok() }, DescribeError::Malformed("query")),
        (HttpRequest { fragment: "f".into(), ..ok() }, DescribeError::Malformed("fragment")),
        // Contradictions: the pseudo-headers and Host against the fields.
        (http("GET", "https", "a", "/x", &[(":path", "/admin")]), DescribeError::Malformed(":path")),
        (http("GET", "https", "a", "/x", &[(":method", "POST")]), DescribeError::Malformed(":method")),
        (http("GET", "https", "a", "/x", &[(":authority", "b")]), DescribeError::Malformed(":authority")),
        (http("GET", "https", "a", "/x", &[("host", "b")]), DescribeError::Malformed("host")),
        (
            HttpRequest {
                header_map: Some(PbHeaderMap {
                    headers: ["a", "b"]
                        .iter()
                        .map(|v| PbHeaderValue {
                            key: "host".into(),
                            raw_value: v.as_bytes().to_vec(),
                            ..PbHeaderValue::default()
                        })
                        .collect(),
                }),
                ..http("GET", "https", "a", "/x", &[])
            },
            DescribeError::Malformed("host"),
        ),
        (http("GET", "https", "a", "/x", &[("bad name", "v")]), DescribeError::Malformed("headers")),
        (http("GET", "https", "a", "/x", &[("x", "a\r\nb")]), DescribeError::Malformed("headers")),
        (
            HttpRequest {
                header_map: Some(PbHeaderMap {
                    headers: vec![PbHeaderValue {
                        key: "x".into(),
                        value: "1".into(),
                        ..PbHeaderValue::default()
                    }],
                }),
                ..http("GET", "https", "a", "/x", &[("y", "2")])
            },
            DescribeError::Malformed("headers"),
        ),
    ];
    for (h, want) in cases {
        let shown = format!("{} {} {} {:.40}", h.method, h.scheme, h.host, h.path);
        assert_eq!(refused(h), want, "{shown}");
    }
    let many: Vec<(String, String)> = (0..=MAX_CHECK_HEADERS)
        .map(|i| (format!("x-{i}"), "v".to_string()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        refused(http("GET", "https", "a", "/x", &many)),
        DescribeError::Malformed("headers")
    );
}

#[test]
fn the_client_address_comes_from_the_source_socket_address() {
    let mut c = check(http("GET", "https", "a", "/", &[]));
    assert_eq!(client_address(&c), None);
    if let Some(a) = c.attributes.as_mut() {
        a.source = Some(Peer {
            address: Some(Address {
                address: Some(PbAddress::SocketAddress(SocketAddress {
                    address: "203.0.113.7".into(),
                    ..SocketAddress::default()
                })),
            }),
            ..Peer::default()
        });
    }
    assert_eq!(client_address(&c), Some(IpAddr::from([203, 0, 113, 7])));
}

fn pairs(opts: &[HeaderValueOption]) -> Vec<(String, String, i32)> {
    opts.iter()
        .map(|o| {
            let h = o.header.clone().unwrap_or_default();
            (h.key, h.value, o.append_action)
        })
        .collect()
}

#[test]
fn an_allow_sets_identity_removes_the_rest_and_adds_the_cookie() {
    let mut set = HeaderMap::new();
    set.insert("x-auth-request-user", HeaderValue::from_static("alice"));
    let mut client = HeaderMap::new();
    client.append(header::SET_COOKIE, HeaderValue::from_static("s=1"));
    client.append(header::SET_COOKIE, HeaderValue::from_static("t=2"));
    let remove = [
        "x-auth-request-user".to_string(),
        "x-auth-request-email".to_string(),
        "x_auth_request_user".to_string(),
        "x-auth-request-email".to_string(),
    ];
    let r = allowed(&set, &remove, &client);
    assert_eq!(r.status.map(|s| s.code), Some(Code::Ok as i32));
    let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
        panic!("an OkHttpResponse");
    };
    let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    let append = HeaderAppendAction::AppendIfExistsOrAdd as i32;
    assert_eq!(
        pairs(&ok.headers),
        [("x-auth-request-user".into(), "alice".into(), overwrite)]
    );
    // Envoy removes after it sets: a name it sets is never in the removal list.
    assert_eq!(
        ok.headers_to_remove,
        ["x-auth-request-email", "x_auth_request_user"]
    );
    assert_eq!(
        pairs(&ok.response_headers_to_add),
        [
            ("set-cookie".into(), "s=1".into(), append),
            ("set-cookie".into(), "t=2".into(), append)
        ]
    );
}

#[tokio::test]
async fn a_denial_carries_the_proxys_answer_and_a_code_for_it() {
    let mut resp = Response::new(crate::body::full("sign in"));
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("https://idp/authorize?x"));
    h.append(header::SET_COOKIE, HeaderValue::from_static("login=1"));
    let r = denied(resp).await;
    assert_eq!(r.status.map(|s| s.code), Some(Code::Unauthenticated as i32));
    let Some(HttpResponse::DeniedResponse(d)) = r.http_response else {
        panic!("a DeniedHttpResponse");
    };
    assert_eq!(d.status.map(|s| s.code), Some(302));
    assert_eq!(d.body, "sign in");
    let got = pairs(&d.headers);
    assert!(got.contains(&(
        "location".into(),
        "https://idp/authorize?x".into(),
        HeaderAppendAction::OverwriteIfExistsOrAdd as i32
    )));
    assert!(got.contains(&(
        "set-cookie".into(),
        "login=1".into(),
        HeaderAppendAction::AppendIfExistsOrAdd as i32
    )));

    for (status, code) in [
        (400, Code::InvalidArgument),
        (401, Code::Unauthenticated),
        (403, Code::PermissionDenied),
        (404, Code::NotFound),
        (405, Code::PermissionDenied),
        (502, Code::Unavailable),
        (503, Code::Unavailable),
    ] {
        let s = StatusCode::from_u16(status).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(code_for(s), code, "{status}");
    }
}

#[test]
fn only_http2_grpc_posts_to_the_check_path_are_check_calls() {
    let on = ExternalAuthConfig {
        envoy_grpc: true,
        ..ExternalAuthConfig::default()
    };
    let req = |version: Version, method: Method, path: &str, ct: &str| {
        Request::builder()
            .version(version)
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, ct)
            .body(())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let grpc = "application/grpc";
    assert!(is_check(&on, &req(Version::HTTP_2, Method::POST, CHECK_PATH, grpc)));
    assert!(is_check(&on, &req(Version::HTTP_2, Method::POST, CHECK_PATH, "application/grpc+proto")));
    assert!(!is_check(&ExternalAuthConfig::default(), &req(Version::HTTP_2, Method::POST, CHECK_PATH, grpc)));
    assert!(!is_check(&on, &req(Version::HTTP_11, Method::POST, CHECK_PATH, grpc)));
    assert!(!is_check(&on, &req(Version::HTTP_2, Method::GET, CHECK_PATH, grpc)));
    assert!(!is_check(&on, &req(Version::HTTP_2, Method::POST, "/envoy.service.auth.v2.Authorization/Check", grpc)));
    assert!(!is_check(&on, &req(Version::HTTP_2, Method::POST, CHECK_PATH, "application/grpcx")));
    assert!(!is_check(&on, &req(Version::HTTP_2, Method::POST, CHECK_PATH, "application/json")));
}

/// Text of the kinds a check request's fields hold, hostile parts included (control
/// characters, pseudo-header names, non-ASCII, `%`, `..`, empty).
fn hostile() -> impl proptest::strategy::Strategy<Value = String> {
    proptest::string::string_regex("(|/|[a-zA-Z0-9.:_-]{1,6}|%2[eEfF]|\\.\\.|\\\\|;|\\?|#| |\r|\n|\u{0}|é|:path|host){0,8}")
        .unwrap_or_else(|e| panic!("{e}"))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, ..proptest::prelude::ProptestConfig::default() })]

    /// Whatever Envoy (or anyone) sends: no panic, and a request described is the one the
    /// fields name: its method, its target exactly as sent, `Host` the `host` field, no
    /// pseudo-header and no header a contradicting copy of the fields.
    #[test]
    fn a_described_request_is_the_one_the_fields_name(
        method in hostile(),
        scheme in proptest::prop_oneof![proptest::strategy::Just("https".to_string()), hostile()],
        host in hostile(),
        path in hostile(),
        headers in proptest::collection::vec((hostile(), hostile()), 0..6),
    ) {
        let h = http(&method, &scheme, &host, &path, &[]);
        let h = HttpRequest {
            headers: headers.into_iter().collect(),
            ..h
        };
        if let Ok((head, scheme)) = describe_check(&check(h.clone())) {
            proptest::prop_assert!(scheme == "http" || scheme == "https");
            proptest::prop_assert_eq!(head.method.as_str(), method.as_str());
            proptest::prop_assert_eq!(head.uri.to_string(), path.clone());
            proptest::prop_assert_eq!(head.headers.get_all(header::HOST).iter().count(), 1);
            proptest::prop_assert_eq!(head.headers[header::HOST].as_bytes(), host.as_bytes());
            proptest::prop_assert!(head.headers.keys().all(|k| !k.as_str().starts_with(':')));
            for (pseudo, field) in [(":path", &path), (":method", &method), (":authority", &host)] {
                if let Some(v) = h.headers.get(pseudo) {
                    proptest::prop_assert_eq!(v, field);
                }
            }
        }
    }
}
