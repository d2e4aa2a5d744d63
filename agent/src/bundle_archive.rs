//! Fetching a bundle sent as one archive, the format before manifests of files: downloaded
//! whole, its digest verified and extracted safely (`testfleet_bundle::extract`). Kept for one
//! release, for clients that still send archives (`--bundle-format archive`, or older ones).

use std::io::Write;
use std::path::Path;

use testfleet_bundle::ExtractLimits;
use testfleet_proto::pb;
use testfleet_proto::pb::coordinator_client::CoordinatorClient;
use testfleet_security::AuthChannel;

use crate::bundle_error::CacheError;

/// Downloads bundle `digest` as one archive into `archive` (a name of this download's own) and
/// extracts it into `staging`. The archive is removed either way, and the extraction if it fails.
pub async fn fetch(
    digest: &str,
    client: &mut CoordinatorClient<AuthChannel>,
    archive: &Path,
    staging: &Path,
) -> Result<(), CacheError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CacheError::Io { path, source }
    };
    let download_err = |status: String| CacheError::Download {
        digest: digest.to_owned(),
        status,
    };
    let downloaded = async {
        let mut stream = client
            .download_bundle(pb::BundleRef {
                digest: digest.to_owned(),
            })
            .await
            .map_err(|s| download_err(s.message().to_owned()))?
            .into_inner();
        let mut file = std::fs::File::create(archive).map_err(io(archive))?;
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| download_err(s.message().to_owned()))?
        {
            file.write_all(&chunk.data).map_err(io(archive))?;
        }
        file.sync_all().map_err(io(archive))?;
        drop(file);
        Ok::<(), CacheError>(())
    }
    .await;
    if let Err(e) = downloaded {
        let _ = std::fs::remove_file(archive);
        return Err(e);
    }
    tracing::info!(%digest, "bundle downloaded");

    let (d, a, s) = (
        digest.to_owned(),
        archive.to_path_buf(),
        staging.to_path_buf(),
    );
    let extracted = tokio::task::spawn_blocking(move || {
        testfleet_bundle::extract(&a, &d, &s, ExtractLimits::default())
    })
    .await
    .expect("extraction task does not panic");
    let _ = std::fs::remove_file(archive);
    if let Err(source) = extracted {
        let _ = std::fs::remove_dir_all(staging);
        return Err(CacheError::Bundle {
            digest: digest.to_owned(),
            source,
        });
    }
    Ok(())
}
