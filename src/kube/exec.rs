//! Commands in a pod's container: run, stat, and files streamed out and in with size and change
//! checks.

use kube::api::AttachParams;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Cluster, KubeError};

impl Cluster {
    /// Runs a command in the pod and returns its stdout; a non-zero exit is an error with the
    /// command's own message.
    pub async fn run(
        &self,
        pod: &str,
        container: &str,
        command: &[&str],
    ) -> Result<Vec<u8>, KubeError> {
        let mut out = vec![];
        self.exec_into(pod, container, command, &mut out).await?;
        Ok(out)
    }

    /// Starts `command` in the container: stderr always, and stdin or stdout.
    async fn start(
        &self,
        pod: &str,
        container: &str,
        command: &[&str],
        stdin: bool,
    ) -> Result<kube::api::AttachedProcess, KubeError> {
        let ap = AttachParams::default()
            .container(container)
            .stdin(stdin)
            .stdout(!stdin)
            .stderr(true);
        self.pods()
            .exec(pod, command.to_vec(), &ap)
            .await
            .map_err(|source| KubeError::Api {
                what: format!("exec `{}` in {pod}/{container}", command.join(" ")),
                source,
            })
    }

    /// Runs a command, streaming its stdout into `sink`. Ends with an error when the exit
    /// status is not Success or never arrives (a cut stream).
    async fn exec_into<W: AsyncWrite + Unpin>(
        &self,
        pod: &str,
        container: &str,
        command: &[&str],
        sink: &mut W,
    ) -> Result<u64, KubeError> {
        let joined = command.join(" ");
        let fail = |message: String| KubeError::Command {
            pod: pod.into(),
            container: container.into(),
            command: joined.clone(),
            message,
        };
        let mut proc = self.start(pod, container, command, false).await?;
        let mut stdout = proc.stdout().expect("stdout requested");
        let mut stderr = proc.stderr().expect("stderr requested");
        let status = proc.take_status().expect("status requested");
        let err_task = tokio::spawn(async move {
            let mut e = vec![];
            let _ = stderr.read_to_end(&mut e).await;
            e
        });
        // kube does not end stdout when the connection drops without a close frame, so read
        // until the process's message loop is over, whichever way it ended.
        let mut buf = vec![0u8; 256 * 1024];
        let mut n_total = 0u64;
        let join = proc.join();
        tokio::pin!(join);
        let ended = loop {
            tokio::select! {
                biased;
                n = stdout.read(&mut buf) => match n.map_err(KubeError::Local)? {
                    0 => break (&mut join).await,
                    n => {
                        sink.write_all(&buf[..n]).await.map_err(KubeError::Local)?;
                        n_total += n as u64;
                    }
                },
                r = &mut join => break r,
            }
        };
        sink.flush().await.map_err(KubeError::Local)?;
        let status = status.await;
        let cut = || KubeError::StreamCut {
            pod: pod.into(),
            path: joined.clone(),
            got: n_total,
            expected: 0,
        };
        if ended.is_err() {
            err_task.abort();
            return Err(cut());
        }
        match status {
            Some(s) if s.status.as_deref() == Some("Success") => {
                err_task.abort();
                Ok(n_total)
            }
            Some(s) => {
                let stderr = err_task.await.unwrap_or_default();
                let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
                let message = s.message.unwrap_or_else(|| "failed".into());
                Err(fail(if stderr.is_empty() {
                    message
                } else {
                    format!("{message}: {stderr}")
                }))
            }
            None => {
                err_task.abort();
                Err(cut())
            }
        }
    }

    /// `stat` of a file in the pod: (size, mtime) as text.
    pub async fn stat(
        &self,
        pod: &str,
        container: &str,
        path: &str,
    ) -> Result<(u64, String), KubeError> {
        let out = self
            .run(pod, container, &["stat", "-c", "%s %Y", path])
            .await?;
        let text = String::from_utf8_lossy(&out).trim().to_string();
        let size = text
            .split(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| KubeError::Command {
                pod: pod.into(),
                container: container.into(),
                command: format!("stat {path}"),
                message: format!("unexpected output {text:?}"),
            })?;
        Ok((size, text))
    }

    /// Streams a file out of the pod (no tools needed in the container but `cat` and `stat`),
    /// checking that every byte arrived and that the file did not change meanwhile.
    pub async fn copy_out<W: AsyncWrite + Unpin>(
        &self,
        pod: &str,
        container: &str,
        path: &str,
        sink: &mut W,
    ) -> Result<u64, KubeError> {
        let (size, before) = self.stat(pod, container, path).await?;
        let got = match self.exec_into(pod, container, &["cat", path], sink).await {
            Ok(n) => n,
            Err(KubeError::StreamCut { got, .. }) => {
                return Err(KubeError::StreamCut {
                    pod: pod.into(),
                    path: path.into(),
                    got,
                    expected: size,
                });
            }
            Err(e) => return Err(e),
        };
        if got != size {
            // More than the size read before: the file grew while it streamed.
            if got > size {
                let (_, after) = self.stat(pod, container, path).await?;
                return Err(KubeError::Changed {
                    pod: pod.into(),
                    path: path.into(),
                    before,
                    after,
                });
            }
            return Err(KubeError::StreamCut {
                pod: pod.into(),
                path: path.into(),
                got,
                expected: size,
            });
        }
        let (_, after) = self.stat(pod, container, path).await?;
        if after != before {
            return Err(KubeError::Changed {
                pod: pod.into(),
                path: path.into(),
                before,
                after,
            });
        }
        Ok(got)
    }

    /// Streams `size` bytes from `source` into `path` in the pod. `head -c` bounds the read, so
    /// it ends even where the stream protocol cannot close stdin (v4); the size is checked after.
    pub async fn copy_in<R: tokio::io::AsyncRead + Unpin>(
        &self,
        pod: &str,
        container: &str,
        path: &str,
        source: &mut R,
        size: u64,
    ) -> Result<(), KubeError> {
        let script = format!("head -c {size} > '{}'", path.replace('\'', ""));
        let command = ["sh", "-c", script.as_str()];
        let fail = |message: String| KubeError::Command {
            pod: pod.into(),
            container: container.into(),
            command: script.clone(),
            message,
        };
        let mut proc = self.start(pod, container, &command, true).await?;
        let mut stdin = proc.stdin().expect("stdin requested");
        let mut stderr = proc.stderr().expect("stderr requested");
        let status = proc.take_status().expect("status requested");
        let sent = tokio::io::copy(&mut source.take(size), &mut stdin)
            .await
            .map_err(|e| fail(format!("sending the file: {e}")))?;
        stdin.shutdown().await.ok();
        drop(stdin);
        let mut err = vec![];
        let _ = stderr.read_to_end(&mut err).await;
        let status = status.await;
        let _ = proc.join().await;
        match status {
            Some(s) if s.status.as_deref() == Some("Success") => {}
            Some(s) => {
                return Err(fail(format!(
                    "{}: {}",
                    s.message.unwrap_or_else(|| "failed".into()),
                    String::from_utf8_lossy(&err).trim()
                )))
            }
            None => return Err(fail("the stream ended without an exit status".into())),
        }
        let (got, _) = self.stat(pod, container, path).await?;
        if sent != size || got != size {
            return Err(KubeError::StreamCut {
                pod: pod.into(),
                path: path.into(),
                got,
                expected: size,
            });
        }
        Ok(())
    }
}
