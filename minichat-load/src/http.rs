//! One HTTP/1.1 keep-alive connection to a node, owned by one task: the REST scenario runs
//! exactly `--connections` of them (no hidden pool), and set-up uses them to create users.

use crate::error::{LoadError, Result};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::target::Node;

/// A connection and the node it talks to.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Connection {
    pub async fn open(node: &Node) -> Result<Connection> {
        let stream = TcpStream::connect(&node.authority)
            .await
            .map_err(|e| LoadError::io(format!("connect to {}", node.authority), e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| LoadError::io("TCP_NODELAY", e))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| LoadError::http(format!("HTTP handshake with {}", node.authority), e))?;
        // Drives the connection; ends when `sender` is dropped or the server closes it.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection {
            sender,
            authority: node.authority.clone(),
        })
    }

    /// POSTs a JSON body, returning the status and the whole response body.
    pub async fn post_json(
        &mut self,
        path: &str,
        token: Option<&str>,
        body: String,
    ) -> Result<(StatusCode, Bytes)> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| LoadError::Usage(format!("request to {path}: {e}")))?;
        self.sender
            .ready()
            .await
            .map_err(|e| LoadError::http(format!("connection to {}", self.authority), e))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| LoadError::http(format!("POST {path} on {}", self.authority), e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| LoadError::http(format!("body of POST {path}"), e))?
            .to_bytes();
        Ok((status, body))
    }
}
