//! Bundles of content-addressed files over gRPC on a real socket: the client learns which files
//! the coordinator lacks, uploads those as zstd frames, and stores the manifest once every file
//! is there; a run can name it; an agent reads the manifest and downloads each file, which checks
//! out against its digest. What does not check out is refused and leaves nothing.

mod common;

use std::io::Write;

use testfleet_bundle::blob::{BlobDigest, VerifyingDecoder, compress};
use testfleet_bundle::manifest::{Manifest, ManifestEntry};
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

fn frame(contents: &[u8]) -> (BlobDigest, Vec<u8>) {
    let mut bytes = Vec::new();
    let digest = compress(contents, &mut bytes).unwrap();
    (digest, bytes)
}

fn wire(d: &BlobDigest) -> pb::BlobDigest {
    pb::BlobDigest {
        sha256: d.sha256_hex(),
        size: d.size,
    }
}

/// Uploads `bytes` (a frame) under `digest`, in 1 KiB chunks.
async fn upload(
    client: &mut CoordinatorClient<Channel>,
    digest: &BlobDigest,
    bytes: &[u8],
) -> Result<(), tonic::Status> {
    let chunks: Vec<pb::BundleChunk> = bytes
        .chunks(1024)
        .enumerate()
        .map(|(i, data)| pb::BundleChunk {
            digest: if i == 0 {
                digest.sha256_hex()
            } else {
                String::new()
            },
            total_size: if i == 0 { digest.size } else { 0 },
            data: data.to_vec(),
        })
        .collect();
    client
        .upload_blob(tokio_stream::iter(chunks))
        .await
        .map(|_| ())
}

async fn missing(client: &mut CoordinatorClient<Channel>, ds: &[BlobDigest]) -> Vec<String> {
    client
        .find_missing_blobs(pb::FindMissingBlobsRequest {
            blobs: ds.iter().map(wire).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .missing
        .into_iter()
        .map(|d| d.sha256)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_moves_file_by_file_and_only_what_checks_out_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let served = common::serve(dir.path()).await;
    let mut client = CoordinatorClient::new(served.channel.clone());

    let binary: Vec<u8> = (0..200_000u32)
        .flat_map(|i| (i % 97).to_le_bytes())
        .collect();
    let (bin, bin_frame) = frame(&binary);
    let (data, data_frame) = frame(b"fixture data\n");
    let manifest = Manifest::from_entries(vec![
        ManifestEntry {
            path: "target/debug/deps/basic-1f2e".into(),
            sha256: bin.sha256,
            size: bin.size,
            executable: true,
        },
        ManifestEntry {
            path: "ws/tests/data/input.txt".into(),
            sha256: data.sha256,
            size: data.size,
            executable: false,
        },
    ])
    .unwrap();
    let digest = manifest.digest();
    let has = |c: &mut CoordinatorClient<Channel>, d: String| {
        let mut c = c.clone();
        async move {
            c.has_bundle(pb::BundleRef { digest: d })
                .await
                .unwrap()
                .into_inner()
                .present
        }
    };
    assert!(!has(&mut client, digest.clone()).await);

    // One file is uploaded; the manifest is not stored while the other is missing.
    assert_eq!(missing(&mut client, &[bin, data]).await.len(), 2);
    upload(&mut client, &bin, &bin_frame).await.unwrap();
    assert_eq!(
        missing(&mut client, &[bin, data]).await,
        vec![data.sha256_hex()]
    );
    let put = pb::PutManifestRequest {
        digest: digest.clone(),
        manifest: manifest.to_bytes(),
    };
    let reply = client.put_manifest(put.clone()).await.unwrap().into_inner();
    assert_eq!(reply.missing, vec![wire(&data)]);
    assert!(!has(&mut client, digest.clone()).await);

    // A file whose bytes are not what its digest names is refused and leaves nothing.
    let refused = upload(&mut client, &data, &bin_frame).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert_eq!(missing(&mut client, &[data]).await, vec![data.sha256_hex()]);

    upload(&mut client, &data, &data_frame).await.unwrap();
    assert!(
        client
            .put_manifest(put)
            .await
            .unwrap()
            .into_inner()
            .missing
            .is_empty()
    );
    assert!(has(&mut client, digest.clone()).await);

    // A run may name it.
    let mut spec = common::model_spec(1);
    spec.bundle_digest = Some(digest.clone());
    spec.binaries[0].path = "target/debug/deps/basic-1f2e".into();
    spec.binaries[0].cwd = "ws".into();
    client
        .submit_run(pb::SubmitRunRequest {
            spec: Some(pb::RunSpec::from(&spec)),
            ..Default::default()
        })
        .await
        .unwrap();

    // An agent reads the manifest, and each file checks out against its digest.
    let read = client
        .get_manifest(pb::BundleRef {
            digest: digest.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .manifest;
    let limits = testfleet_bundle::manifest::ManifestLimits::from(
        testfleet_bundle::ExtractLimits::default(),
    );
    let read = Manifest::parse(&read, &limits).unwrap();
    assert_eq!(read, manifest);
    for (entry, contents) in read.entries().iter().zip([&binary[..], b"fixture data\n"]) {
        let d = BlobDigest {
            sha256: entry.sha256,
            size: entry.size,
        };
        let mut stream = client.download_blob(wire(&d)).await.unwrap().into_inner();
        let mut check = VerifyingDecoder::new(d, Vec::new()).unwrap();
        while let Some(chunk) = stream.next().await {
            check.write_all(&chunk.unwrap().data).unwrap();
        }
        assert_eq!(check.finish().unwrap(), contents);
    }

    // What is not there is said so.
    let unknown = frame(b"never uploaded").0;
    let status = client.download_blob(wire(&unknown)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = client
        .get_manifest(pb::BundleRef {
            digest: unknown.sha256_hex(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = client
        .find_missing_blobs(pb::FindMissingBlobsRequest {
            blobs: vec![pb::BlobDigest {
                sha256: "../../etc".into(),
                size: 1,
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let _ = served.stop.send(());
}
