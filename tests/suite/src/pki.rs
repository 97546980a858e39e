//! A throwaway certificate authority for the tests that need TLS with client certificates
//! (etcd's): a CA, a server certificate for given addresses, a client certificate, as PEM
//! files in a directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The files [`make`] wrote.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn leaf(
    names: Vec<String>,
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (String, String) {
    let key = KeyPair::generate().expect("a key");
    let mut p = CertificateParams::new(names).expect("names");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

/// A CA, a server certificate for `server_names` (addresses become IP SANs) and a client
/// certificate with common name `client`, into `dir`.
pub fn make(dir: &Path, server_names: &[&str], client: &str) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().expect("a key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "lbt test CA");
    let ca_pem = ca.self_signed(&ca_key).expect("self-signed").pem();
    let issuer = Issuer::new(ca, ca_key);
    let server = leaf(
        server_names.iter().map(|s| s.to_string()).collect(),
        "etcd",
        ExtendedKeyUsagePurpose::ServerAuth,
        &issuer,
    );
    let client = leaf(vec![], client, ExtendedKeyUsagePurpose::ClientAuth, &issuer);
    let pki = Pki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    for (path, text) in [
        (&pki.ca, &ca_pem),
        (&pki.server_cert, &server.0),
        (&pki.server_key, &server.1),
        (&pki.client_cert, &client.0),
        (&pki.client_key, &client.1),
    ] {
        std::fs::write(path, text).unwrap();
    }
    pki
}
