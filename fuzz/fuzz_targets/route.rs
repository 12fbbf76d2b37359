//! The canonical path, the route table and the case near misses on arbitrary method, target
//! and host text: never a panic; an accepted request is canonical (no empty segment, no `;`,
//! no trailing `/` but for `/`, host lowercased without a trailing `.`) and normalising its own
//! canonical form changes nothing; route lookup, near misses and `Path::` literal near misses
//! never panic, and a path a route matches exactly is never also a near miss.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use cedargate::policy::routes::Routes;
use cedargate::request::{RawHttp, normalise};
use cedargate::text::fold_case;
use libfuzzer_sys::fuzz_target;

fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let (schema, _) = cedar_policy::Schema::from_cedarschema_str(
            r#"entity Order; entity Item; entity User;
               action "orders:read", "items:read", "items:delete"
                 appliesTo { principal: User, resource: [Order, Item] };"#,
        )
        .expect("schema");
        Routes::parse(
            Path::new("routes.yaml"),
            r#"routes:
                 - { method: GET, path: "/orders/{id}", action: "orders:read", resource: 'Order::"{id}"' }
                 - { method: DELETE, path: "/items/{id}", action: "items:delete", resource: 'Item::"{id}"' }
                 - { path: "/items/{id}", action: "items:read", resource: 'Item::"{id}"' }
                 - { path: "/Straße/{*rest}", action: "items:read" }
            "#,
            &schema,
        )
        .expect("routes")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let host = parts.next().unwrap_or_default().to_owned();
    let raw = RawHttp {
        method: method.clone(),
        target,
        host,
        scheme: "https".into(),
        ..RawHttp::default()
    };
    let Ok(request) = normalise(raw, 8192) else {
        return;
    };
    let path = &request.path;
    assert!(path.starts_with('/'));
    assert!(!path.contains("//") && !path.contains(';'));
    assert!(path == "/" || !path.ends_with('/'));
    assert!(!request.host.ends_with('.'));
    assert_eq!(request.host, request.host.to_ascii_lowercase());
    // The canonical form is a fixpoint (its characters percent-encoded back where needed).
    let encoded: String = path
        .chars()
        .map(|c| match c {
            '%' => "%25".to_owned(),
            '?' => "%3F".to_owned(),
            '#' => "%23".to_owned(),
            c => c.to_string(),
        })
        .collect();
    let again = normalise(
        RawHttp {
            method: method.clone(),
            target: encoded,
            host: request.host.clone(),
            scheme: "https".into(),
            ..RawHttp::default()
        },
        usize::MAX,
    );
    if let Ok(again) = again {
        assert_eq!(&again.path, path);
        assert_eq!(again.host, request.host);
    }
    assert_eq!(fold_case(&fold_case(path)), fold_case(path));
    let routes = routes();
    let found = routes.find(&request.method, path).is_some();
    let near = routes.near_miss(&request.method, path);
    assert!(!(found && routes.resolve(&request.method, path).is_err()));
    let _ = near;
});
