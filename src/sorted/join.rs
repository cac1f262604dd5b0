//! The merge-join of two streams sorted by the same key: each key once, from one side or both.

use futures::stream::{self, Stream, StreamExt};

/// A record with the key its stream is sorted by.
pub trait Keyed {
    type Key: Ord + ?Sized;
    fn key(&self) -> &Self::Key;
}

/// One key of a merge-join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined<A, B> {
    /// Only in the left stream.
    Left(A),
    /// Only in the right stream.
    Right(B),
    Both(A, B),
}

/// Merges two streams sorted by key (each key at most once per stream), holding one record of
/// each. The first error from either side ends the stream after it is passed on.
pub fn join<A, B, E, SA, SB>(a: SA, b: SB) -> impl Stream<Item = Result<Joined<A, B>, E>> + Unpin
where
    A: Keyed,
    B: Keyed<Key = A::Key>,
    SA: Stream<Item = Result<A, E>> + Unpin,
    SB: Stream<Item = Result<B, E>> + Unpin,
{
    struct State<SA, SB, A, B> {
        a: stream::Fuse<SA>,
        b: stream::Fuse<SB>,
        ha: Option<A>,
        hb: Option<B>,
        failed: bool,
    }
    let state = State {
        a: a.fuse(),
        b: b.fuse(),
        ha: None,
        hb: None,
        failed: false,
    };
    Box::pin(stream::unfold(state, |mut s| async move {
        if s.failed {
            return None;
        }
        if s.ha.is_none() {
            match s.a.next().await {
                Some(Ok(x)) => s.ha = Some(x),
                Some(Err(e)) => {
                    s.failed = true;
                    return Some((Err(e), s));
                }
                None => {}
            }
        }
        if s.hb.is_none() {
            match s.b.next().await {
                Some(Ok(y)) => s.hb = Some(y),
                Some(Err(e)) => {
                    s.failed = true;
                    return Some((Err(e), s));
                }
                None => {}
            }
        }
        let out = match (s.ha.take(), s.hb.take()) {
            (None, None) => return None,
            (Some(x), None) => Joined::Left(x),
            (None, Some(y)) => Joined::Right(y),
            (Some(x), Some(y)) => match x.key().cmp(y.key()) {
                std::cmp::Ordering::Less => {
                    s.hb = Some(y);
                    Joined::Left(x)
                }
                std::cmp::Ordering::Greater => {
                    s.ha = Some(x);
                    Joined::Right(y)
                }
                std::cmp::Ordering::Equal => Joined::Both(x, y),
            },
        };
        Some((Ok(out), s))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct K(&'static str);
    impl Keyed for K {
        type Key = str;
        fn key(&self) -> &str {
            self.0
        }
    }

    fn ok(keys: &[&'static str]) -> impl Stream<Item = Result<K, String>> + Unpin {
        stream::iter(keys.iter().map(|k| Ok(K(k))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn joins_each_key_once_from_either_side_or_both() {
        let got: Vec<_> = join(ok(&["a", "a.txt", "a/b", "c"]), ok(&["a/b", "b", "d"]))
            .map(Result::unwrap)
            .collect()
            .await;
        use Joined::*;
        assert_eq!(
            got,
            vec![
                Left(K("a")),
                Left(K("a.txt")),
                Both(K("a/b"), K("a/b")),
                Right(K("b")),
                Left(K("c")),
                Right(K("d")),
            ]
        );
        let none: Vec<_> = join(ok(&[]), ok(&[])).collect().await;
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn an_error_ends_the_join() {
        let bad = stream::iter(vec![
            Ok(K("a")),
            Err("page 2 failed".to_string()),
            Ok(K("z")),
        ]);
        let got: Vec<_> = join(bad, ok(&["a", "b", "c"])).collect().await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1], Err("page 2 failed".to_string()));
    }
}
