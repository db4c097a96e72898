//! Bearer-key authentication shared by `serve` and the gateway.

/// The index of the key in `keys` that the request's `Authorization: Bearer` header
/// (or, as Anthropic's clients send it, `x-api-key`) carries. Every key is compared in constant time, so timing tells nothing about which
/// or how much matched. Shared by `serve` and the gateway.
pub fn find_key<K: AsRef<str>>(keys: &[K], headers: &axum::http::HeaderMap) -> Option<usize> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .unwrap_or("")
        .as_bytes();
    let mut found = None;
    for (i, k) in keys.iter().enumerate() {
        let k = k.as_ref().as_bytes();
        let same = k.len() == given.len()
            && k.iter().zip(given).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        if same {
            found = Some(i);
        }
    }
    found
}
