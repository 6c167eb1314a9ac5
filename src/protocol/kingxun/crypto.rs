//! Encrypted bodies: `AES-128-CBC(PKCS#7(plain)) | plain_len u32 LE | crc16(plain) u16 LE`.

use aes::cipher::{block_padding::Pkcs7, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};

use super::frame::crc16;

type Enc = cbc::Encryptor<aes::Aes128>;
type Dec = cbc::Decryptor<aes::Aes128>;

pub const TRAILER: usize = 6;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("encrypted body of {0} bytes is too short or not whole AES blocks")]
    Length(usize),
    #[error("cannot decrypt (wrong key or IV, or bad padding)")]
    Decrypt,
    #[error("plain length {found} does not match the declared {declared}")]
    PlainLength { declared: u32, found: usize },
    #[error("plain CRC {found:#06x} does not match the declared {declared:#06x}")]
    Crc { declared: u16, found: u16 },
}

pub fn encrypt(key: &[u8; 16], iv: &[u8; 16], plain: &[u8]) -> Vec<u8> {
    let mut out = Enc::new(key.into(), iv.into()).encrypt_padded_vec::<Pkcs7>(plain);
    out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc16(plain).to_le_bytes());
    out
}

pub fn decrypt(key: &[u8; 16], iv: &[u8; 16], body: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if body.len() < 16 + TRAILER || !(body.len() - TRAILER).is_multiple_of(16) {
        return Err(CryptoError::Length(body.len()));
    }
    let (cipher, trailer) = body.split_at(body.len() - TRAILER);
    let declared_len = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let declared_crc = u16::from_le_bytes([trailer[4], trailer[5]]);
    let plain = Dec::new(key.into(), iv.into())
        .decrypt_padded_vec::<Pkcs7>(cipher)
        .map_err(|_| CryptoError::Decrypt)?;
    if plain.len() != declared_len as usize {
        return Err(CryptoError::PlainLength {
            declared: declared_len,
            found: plain.len(),
        });
    }
    let found = crc16(&plain);
    if found != declared_crc {
        return Err(CryptoError::Crc {
            declared: declared_crc,
            found,
        });
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_aes_cbc_vector() {
        // RustCrypto's cbc documentation vector: key 0x42.., IV 0x24...
        let key = [0x42; 16];
        let iv = [0x24; 16];
        let plain = b"hello world! this is my plaintext.";
        let body = encrypt(&key, &iv, plain);
        let expected = hex::decode(
            "c7fe247ef97b21f07cbdd26cb5d346bfd27867cb00d9486723e159978fb9a5f914cfb228a710de4171e396e7b6cf859e",
        )
        .unwrap();
        assert_eq!(&body[..48], &expected[..]);
        assert_eq!(&body[48..52], &(plain.len() as u32).to_le_bytes());
        assert_eq!(&body[52..54], &crc16(plain).to_le_bytes());
        assert_eq!(decrypt(&key, &iv, &body).unwrap(), plain);
    }

    #[test]
    fn tampering_is_detected() {
        let key = [1; 16];
        let iv = [2; 16];
        let body = encrypt(&key, &iv, b"abc");
        let mut bad_crc = body.clone();
        let n = bad_crc.len();
        bad_crc[n - 1] ^= 1;
        assert!(matches!(
            decrypt(&key, &iv, &bad_crc),
            Err(CryptoError::Crc { .. })
        ));
        let mut bad_len = body.clone();
        bad_len[n - 6] = 9;
        assert!(matches!(
            decrypt(&key, &iv, &bad_len),
            Err(CryptoError::PlainLength { .. })
        ));
        assert!(decrypt(&[9; 16], &iv, &body).is_err(), "wrong key");
        assert!(matches!(
            decrypt(&key, &iv, &body[..10]),
            Err(CryptoError::Length(10))
        ));
    }
}
